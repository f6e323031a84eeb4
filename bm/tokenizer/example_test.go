package tokenizer_test

import (
	"fmt"
	"log"

	"blackmamba/bm/tokenizer"
)

// Encoding documents for training: each document's ids followed by the end-of-text token.
func Example() {
	path, err := tokenizer.EnsureNeoX(tokenizer.DefaultDataDir()) // fetches once, then uses the cache
	if err != nil {
		log.Fatal(err)
	}
	tok, err := tokenizer.Load(path)
	if err != nil {
		log.Fatal(err)
	}
	docs := []string{"The first document.", "def second():\n    return 2\n"}
	var stream []int
	for _, ids := range tok.EncodeBatch(docs) {
		stream = append(append(stream, ids...), tokenizer.EOS)
	}
	fmt.Println(len(stream), tok.Decode(stream[:4]))
}
