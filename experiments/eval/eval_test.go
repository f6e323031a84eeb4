package eval

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// byteEncoder maps each byte to its value: a stand-in tokenizer with known behaviour.
type byteEncoder struct{}

func (byteEncoder) Encode(s string) []int {
	ids := make([]int, len(s))
	for i := range len(s) {
		ids[i] = int(s[i])
	}
	return ids
}

// letterModel is a model whose log-likelihoods are known in closed form: every token costs
// log(1/2) if it is a lower-case vowel and log(1/10) otherwise; greedy decoding always emits
// 'e'. It ignores the context.
type letterModel struct{ calls int }

func tokenLogProb(id int) float64 {
	if strings.ContainsRune("aeiou", rune(id)) {
		return math.Log(0.5)
	}
	return math.Log(0.1)
}

func (m *letterModel) Score(reqs []Request) ([]Score, error) {
	m.calls++
	out := make([]Score, len(reqs))
	for i, r := range reqs {
		greedy := true
		for _, id := range r.Continuation {
			out[i].LogLik += tokenLogProb(id)
			greedy = greedy && id == 'e'
		}
		out[i].Greedy = greedy
	}
	return out, nil
}

func writeFile(t *testing.T, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestHandMadeTasks(t *testing.T) {
	dir := t.TempDir()
	// Choice " aaa" (4 tokens: ' ' costs log .1, vowels log .5) beats " bbbbb".
	// Example 2: " zz" (3 tokens, all log .1: -6.91, per char -2.30) vs " aeiouaeiou" (11 tokens:
	// -2.30 + 10·-0.69 = -9.24, per char -0.84): acc picks " zz", acc_norm the vowels.
	writeFile(t, dir, "piqa.jsonl", `{"query": "Question: q1\n", "choices": ["aaa", "bbbbb"], "gold": 0}
{"query": "Question: q2\n", "choices": ["zz", "aeiouaeiou"], "gold": 1}
`)
	writeFile(t, dir, "winogrande.jsonl", `{"context_options": ["A", "B"], "continuation": "x", "gold": 1}
`)
	writeFile(t, dir, "lambada_openai.jsonl", `{"context": "c1", "continuation": "eee"}
{"context": "c2", "continuation": "eea"}
`)
	m := &letterModel{}
	piqa, err := Load(dir, "piqa", 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := piqa.Examples[0].Contexts[0]; got != "Question: q1\nAnswer:" {
		t.Errorf("piqa prompt = %q", got)
	}
	r, err := Run(piqa, byteEncoder{}, m, 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Acc != 0.5 || r.AccNorm != 1 || r.Chance != 0.5 {
		t.Errorf("piqa: acc=%v acc_norm=%v chance=%v, want 0.5, 1, 0.5", r.Acc, r.AccNorm, r.Chance)
	}
	if m.calls != 2 { // 4 requests in batches of 3
		t.Errorf("scorer called %d times, want 2", m.calls)
	}
	wino, err := Load(dir, "winogrande", 0)
	if err != nil {
		t.Fatal(err)
	}
	// Both options score the same continuation equally: the first (index 0) wins ties.
	if r, _ := Run(wino, byteEncoder{}, m, 8, nil); r.Acc != 0 {
		t.Errorf("winogrande acc = %v, want 0 (tie goes to the first option)", r.Acc)
	}
	lam, err := Load(dir, "lambada", 0)
	if err != nil {
		t.Fatal(err)
	}
	r, err = Run(lam, byteEncoder{}, m, 8, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The continuation includes the leading space, which greedy ('e') never produces.
	wantLL := ((math.Log(0.1) + 3*math.Log(0.5)) + (math.Log(0.1) + 3*math.Log(0.5))) / 2
	if r.Acc != 0 || math.Abs(r.PPL-math.Exp(-wantLL)) > 1e-9 {
		t.Errorf("lambada: acc=%v ppl=%v, want 0 and %v", r.Acc, r.PPL, math.Exp(-wantLL))
	}
}

func TestEncodePairMovesTrailingSpace(t *testing.T) {
	r := EncodePair(byteEncoder{}, "ctx  ", "ab")
	if string(rune(r.Context[len(r.Context)-1])) != "x" || len(r.Continuation) != 4 {
		t.Errorf("context %v continuation %v", r.Context, r.Continuation)
	}
	r = EncodePair(byteEncoder{}, "", "ab")
	if len(r.Context) != 1 || r.Context[0] != 0 {
		t.Errorf("empty context should become [EOS], got %v", r.Context)
	}
}

func TestMalformedFiles(t *testing.T) {
	cases := []struct{ task, file, content, want string }{
		{"piqa", "piqa.jsonl", "{\"query\": \"q\", \"choices\": [\"a\", \"b\"], \"gold\": 0}\n{not json\n", "piqa.jsonl:2: malformed JSON"},
		{"arc_easy", "arc_easy.jsonl", "{\"query\": \"q\", \"choices\": [\"a\", \"b\"], \"gold\": 5}\n", "arc_easy.jsonl:1: gold 5 out of range"},
		{"openbookqa", "openbook_qa.jsonl", "\n\n{\"query\": \"q\", \"choices\": [\"a\"], \"gold\": 0}\n", "openbook_qa.jsonl:3: want at least 2 choices"},
		{"winogrande", "winogrande.jsonl", "{\"continuation\": \"x\", \"gold\": 0}\n", "winogrande.jsonl:1: want fields"},
		{"lambada", "lambada_openai.jsonl", "{\"context\": \"c\", \"continuation\": \"\"}\n", "lambada_openai.jsonl:1: want fields"},
		{"boolq", "boolq.jsonl", "", "no examples"},
	}
	for _, c := range cases {
		dir := t.TempDir()
		writeFile(t, dir, c.file, c.content)
		_, err := Load(dir, c.task, 0)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want it to contain %q", c.task, err, c.want)
		}
	}
	if _, err := Load(t.TempDir(), "piqa", 0); err == nil || !strings.Contains(err.Error(), "piqa.jsonl") {
		t.Errorf("missing file: error %v should name the file", err)
	}
	if _, err := ParseTaskList("piqa,nope"); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("unknown task: %v", err)
	}
}

// TestSharedEvalSets parses the real evaluation files when they are present beside the
// repository, and checks their sizes against the documented row counts.
func TestSharedEvalSets(t *testing.T) {
	dir := filepath.Join("..", "..", "..", "shared", "evals")
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("evaluation sets not found at %s: skipping", dir)
	}
	want := map[string]int{"piqa": 1838, "openbookqa": 500, "arc_easy": 2376, "arc_challenge": 1172,
		"boolq": 3270, "winogrande": 1267, "lambada": 5153, "hellaswag": 10042}
	for name, n := range want {
		task, err := Load(dir, name, 0)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(task.Examples) != n {
			t.Errorf("%s: %d examples, want %d", name, len(task.Examples), n)
		}
	}
	hs, _ := Load(dir, "hellaswag", 2)
	if len(hs.Examples) != 2 || len(hs.Examples[0].Continuations) != 4 || strings.Contains(hs.Examples[0].Contexts[0], "[") {
		t.Errorf("hellaswag parse: %+v", hs.Examples[0])
	}
}
