// Package eval scores language models on held-out text and on the zero-shot multiple-choice
// tasks of the BlackMamba paper (HellaSwag, PIQA, WinoGrande, LAMBADA, ARC-e, ARC-c,
// OpenBookQA, plus BoolQ).
//
// Conventions follow lm-evaluation-harness: each choice is scored by the log-likelihood of
// " " + choice after the prompt; acc picks the highest log-likelihood, acc_norm the highest
// log-likelihood per character of the continuation; LAMBADA reports exact greedy match of
// the last word and the perplexity exp(−mean log-likelihood). Differences from the harness
// are listed on Prompt.
package eval

import (
	"bufio"
	"compress/bzip2"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Kind is how a task is scored.
type Kind int

const (
	// MultipleChoice: one prompt, several continuations; acc and acc_norm.
	MultipleChoice Kind = iota
	// PartialContext: several prompts, one shared continuation (WinoGrande); acc.
	PartialContext
	// Cloze: one prompt, one continuation scored by exact greedy match and perplexity (LAMBADA).
	Cloze
)

// Example is one task item, already rendered as text requests.
type Example struct {
	// Contexts holds one prompt per choice (MultipleChoice repeats the same prompt).
	Contexts []string
	// Continuations holds one continuation per choice (PartialContext repeats the same one).
	Continuations []string
	// Gold is the index of the right choice (0 for Cloze).
	Gold int
}

// Task is a loaded evaluation set.
type Task struct {
	Name     string
	Kind     Kind
	Examples []Example
}

// TaskInfo describes a known task: its file in the evaluation folder and how it is scored.
type TaskInfo struct {
	Name string
	File string
	Kind Kind
	// Headline is the metric usually quoted for the task ("acc" or "acc_norm").
	Headline string
}

// Known lists the supported tasks by name.
var Known = map[string]TaskInfo{
	"piqa":          {"piqa", "piqa.jsonl", MultipleChoice, "acc"},
	"arc_easy":      {"arc_easy", "arc_easy.jsonl", MultipleChoice, "acc"},
	"arc_challenge": {"arc_challenge", "arc_challenge.jsonl", MultipleChoice, "acc_norm"},
	"openbookqa":    {"openbookqa", "openbook_qa.jsonl", MultipleChoice, "acc_norm"},
	"boolq":         {"boolq", "boolq.jsonl", MultipleChoice, "acc"},
	"winogrande":    {"winogrande", "winogrande.jsonl", PartialContext, "acc"},
	"lambada":       {"lambada", "lambada_openai.jsonl", Cloze, "acc"},
	"hellaswag":     {"hellaswag", "hellaswag_val_full.txt.bz2", MultipleChoice, "acc_norm"},
}

// TaskNames returns the known task names, sorted.
func TaskNames() []string {
	var names []string
	for n := range Known {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ParseTaskList splits a comma-separated task list ("all" means every known task) and checks
// every name.
func ParseTaskList(s string) ([]string, error) {
	if strings.TrimSpace(s) == "all" {
		return TaskNames(), nil
	}
	var out []string
	for _, n := range strings.Split(s, ",") {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		if _, ok := Known[n]; !ok {
			return nil, fmt.Errorf("unknown task %q (known: %s)", n, strings.Join(TaskNames(), ", "))
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("empty task list %q", s)
	}
	return out, nil
}

// Load reads task name from dir (the folder holding the task files), keeping at most limit
// examples (0 = all).
func Load(dir, name string, limit int) (*Task, error) {
	info, ok := Known[name]
	if !ok {
		return nil, fmt.Errorf("unknown task %q (known: %s)", name, strings.Join(TaskNames(), ", "))
	}
	path := filepath.Join(dir, info.File)
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("task %s: %w", name, err)
	}
	defer f.Close()
	var r io.Reader = f
	if strings.HasSuffix(path, ".bz2") {
		r = bzip2.NewReader(f)
	}
	t := &Task{Name: name, Kind: info.Kind}
	if name == "hellaswag" {
		t.Examples, err = parseHellaSwag(r, path, limit)
	} else {
		t.Examples, err = parseJSONL(r, path, name, info.Kind, limit)
	}
	if err != nil {
		return nil, err
	}
	if len(t.Examples) == 0 {
		return nil, fmt.Errorf("%s: no examples", path)
	}
	return t, nil
}

// jsonRow holds every field used by the JSON-lines task files.
type jsonRow struct {
	Query          *string  `json:"query"`
	Choices        []string `json:"choices"`
	Gold           *int     `json:"gold"`
	Context        *string  `json:"context"`
	Continuation   *string  `json:"continuation"`
	ContextOptions []string `json:"context_options"`
}

// Prompt renders a query the way lm-evaluation-harness phrases the task. Differences from the
// harness: the files already carry "Question: …" prefixes (PIQA, ARC) and the BoolQ passage;
// only the trailing "Answer:" cue is added here, and OpenBookQA uses the question stem as is.
func Prompt(task, query string) string {
	switch task {
	case "piqa":
		return strings.TrimRight(query, "\n") + "\nAnswer:"
	case "arc_easy", "arc_challenge", "boolq":
		return query + "\nAnswer:"
	default:
		return query
	}
}

func parseJSONL(r io.Reader, path, task string, kind Kind, limit int) ([]Example, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	var out []Example
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		bad := func(format string, args ...any) error {
			return fmt.Errorf("%s:%d: %s", path, line, fmt.Sprintf(format, args...))
		}
		var row jsonRow
		dec := json.NewDecoder(strings.NewReader(text))
		if err := dec.Decode(&row); err != nil {
			return nil, bad("malformed JSON: %v", err)
		}
		var ex Example
		switch kind {
		case MultipleChoice:
			if row.Query == nil || row.Gold == nil {
				return nil, bad("want fields \"query\", \"choices\" and \"gold\"")
			}
			if len(row.Choices) < 2 {
				return nil, bad("want at least 2 choices, got %d", len(row.Choices))
			}
			p := Prompt(task, *row.Query)
			for _, c := range row.Choices {
				ex.Contexts = append(ex.Contexts, p)
				ex.Continuations = append(ex.Continuations, " "+c)
			}
			ex.Gold = *row.Gold
		case PartialContext:
			if row.Continuation == nil || row.Gold == nil || len(row.ContextOptions) < 2 {
				return nil, bad("want fields \"context_options\" (at least 2), \"continuation\" and \"gold\"")
			}
			for _, c := range row.ContextOptions {
				ex.Contexts = append(ex.Contexts, c)
				ex.Continuations = append(ex.Continuations, " "+*row.Continuation)
			}
			ex.Gold = *row.Gold
		case Cloze:
			if row.Context == nil || row.Continuation == nil || *row.Continuation == "" {
				return nil, bad("want fields \"context\" and a non-empty \"continuation\"")
			}
			ex.Contexts = []string{*row.Context}
			ex.Continuations = []string{" " + *row.Continuation}
		}
		if ex.Gold < 0 || ex.Gold >= len(ex.Contexts) {
			return nil, bad("gold %d out of range for %d choices", ex.Gold, len(ex.Contexts))
		}
		out = append(out, ex)
		if limit > 0 && len(out) >= limit {
			break
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s:%d: %w", path, line, err)
	}
	return out, nil
}

// parseHellaSwag reads the 6-lines-per-item text format: "{activity_label}: {ctx}", the gold
// index 0–3, then the 4 endings.
func parseHellaSwag(r io.Reader, path string, limit int) ([]Example, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	var out []Example
	var lines []string
	line := 0
	for sc.Scan() {
		line++
		lines = append(lines, sc.Text())
		if len(lines) < 6 {
			continue
		}
		gold, err := strconv.Atoi(strings.TrimSpace(lines[1]))
		if err != nil || gold < 0 || gold > 3 {
			return nil, fmt.Errorf("%s:%d: want a gold index 0-3, got %q", path, line-4, lines[1])
		}
		ctx := hellaswagClean(lines[0])
		ex := Example{Gold: gold}
		for _, e := range lines[2:6] {
			ex.Contexts = append(ex.Contexts, ctx)
			ex.Continuations = append(ex.Continuations, " "+hellaswagClean(e))
		}
		out = append(out, ex)
		lines = lines[:0]
		if limit > 0 && len(out) >= limit {
			break
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s:%d: %w", path, line, err)
	}
	if len(lines) != 0 && (limit == 0 || len(out) < limit) {
		return nil, fmt.Errorf("%s:%d: truncated item: %d trailing lines, want groups of 6", path, line, len(lines))
	}
	return out, nil
}

// hellaswagClean applies the harness's preprocessing: drop WikiHow "[title]" markers and
// bracketed header artefacts, collapse double spaces.
func hellaswagClean(s string) string {
	s = strings.TrimSpace(s)
	s = strings.ReplaceAll(s, " [title]", ". ")
	for {
		i := strings.Index(s, "[")
		if i < 0 {
			break
		}
		j := strings.Index(s[i:], "]")
		if j < 0 {
			break
		}
		s = s[:i] + s[i+j+1:]
	}
	return strings.ReplaceAll(s, "  ", " ")
}
