package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"blackmamba/bm/tokenizer"
)

func init() {
	register(&command{
		name:    "tokenize",
		summary: "encode text to token ids (or decode ids with -decode) with the NeoX-20B tokenizer",
		run:     runTokenize,
	})
}

func runTokenize(fs *flag.FlagSet, args []string) error {
	text := fs.String("text", "", "text to encode (or ids to decode with -decode)")
	file := fs.String("file", "", "read the input from this file (\"-\" for standard input) instead of -text")
	decode := fs.Bool("decode", false, "decode: the input is token ids separated by spaces, commas or newlines")
	tokPath := fs.String("tokenizer", "", "tokenizer.json to use (default: the cached NeoX-20B file under -data)")
	dataDir := fs.String("data", tokenizer.DefaultDataDir(), "data folder holding the cached tokenizer")
	showTokens := fs.Bool("tokens", false, "print one \"id<TAB>token\" line per token instead of the ids on one line")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q (use -text or -file)", fs.Args())
	}
	input := *text
	switch {
	case *file != "" && *text != "":
		return errors.New("give either -text or -file, not both")
	case *file == "-":
		b, err := io.ReadAll(os.Stdin)
		if err != nil {
			return fmt.Errorf("reading standard input: %w", err)
		}
		input = string(b)
	case *file != "":
		b, err := os.ReadFile(*file)
		if err != nil {
			return err
		}
		input = string(b)
	}

	var tok *tokenizer.Tokenizer
	var err error
	if *tokPath != "" {
		tok, err = tokenizer.Load(*tokPath)
	} else {
		tok, err = tokenizer.LoadNeoX(*dataDir)
	}
	if err != nil {
		return err
	}

	if *decode {
		ids, err := parseIDs(input, tok.VocabSize())
		if err != nil {
			return err
		}
		fmt.Print(tok.Decode(ids))
		return nil
	}
	ids := tok.Encode(input)
	if *showTokens {
		for _, id := range ids {
			t, _ := tok.Token(id)
			fmt.Printf("%d\t%s\n", id, strconv.Quote(t))
		}
		return nil
	}
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = strconv.Itoa(id)
	}
	fmt.Println(strings.Join(parts, " "))
	return nil
}

// parseIDs reads token ids separated by spaces, commas, brackets or newlines.
func parseIDs(s string, vocab int) ([]int, error) {
	fields := strings.FieldsFunc(s, func(r rune) bool {
		return r == ',' || r == '[' || r == ']' || r == ' ' || r == '\t' || r == '\n' || r == '\r'
	})
	ids := make([]int, len(fields))
	for i, f := range fields {
		id, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("decode input: item %d (%q) is not an integer token id", i+1, f)
		}
		if id < 0 || id >= vocab {
			return nil, fmt.Errorf("decode input: item %d is id %d, outside [0, %d)", i+1, id, vocab)
		}
		ids[i] = id
	}
	return ids, nil
}
