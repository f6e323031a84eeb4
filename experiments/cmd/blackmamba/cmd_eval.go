package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"blackmamba/bm/data"
	"blackmamba/bm/tokenizer"
	"blackmamba/experiments/eval"
	"blackmamba/xla"
)

func init() {
	register(&command{
		name: "eval",
		summary: "score a model on zero-shot tasks (piqa, arc_easy, …) or, with -perplexity, on a corpus's " +
			"held-out splits, writing a JSON report",
		run: runEval,
	})
}

// evalReport is the JSON report of "blackmamba eval".
type evalReport struct {
	Model      string                  `json:"model"`          // the model path, or random:PRESET
	Seed       int64                   `json:"seed,omitempty"` // weight seed of a random model
	Params     int64                   `json:"params"`         // total parameters
	Backend    string                  `json:"backend"`
	Activation string                  `json:"activation"`
	Tasks      []eval.Result           `json:"tasks,omitempty"`
	Corpus     string                  `json:"corpus,omitempty"`
	SeqLen     int                     `json:"seq_len,omitempty"`
	Perplexity []eval.DomainPerplexity `json:"perplexity,omitempty"`
	Seconds    float64                 `json:"seconds"`
}

// progressLine rewrites one status line on w.
type progressLine struct {
	w     io.Writer
	last  time.Time
	width int
}

func (p *progressLine) update(s string, force bool) {
	if !force && time.Since(p.last) < 200*time.Millisecond {
		return
	}
	p.last = time.Now()
	pad := max(0, p.width-len(s))
	p.width = len(s)
	fmt.Fprintf(p.w, "\r%s%*s", s, pad, "")
}

func (p *progressLine) done() {
	if p.width > 0 {
		fmt.Fprintln(p.w)
		p.width = 0
	}
}

// evalTasks loads each named task from dataDir (at most limit examples each, 0 = all) and
// scores it with s, tokenizing with enc, batch requests at a time; progress goes to w.
func evalTasks(s eval.Scorer, enc eval.Encoder, dataDir string, names []string, limit, batch int, w io.Writer) ([]eval.Result, error) {
	var results []eval.Result
	p := &progressLine{w: w}
	for _, name := range names {
		t, err := eval.Load(dataDir, name, limit)
		if err != nil {
			return results, err
		}
		start := time.Now()
		r, err := eval.Run(t, enc, s, batch, func(done, total int) {
			el := time.Since(start).Seconds()
			eta := el / float64(done) * float64(total-done)
			p.update(fmt.Sprintf("%s: %d/%d requests (%.0f%%), %.0fs, about %.0fs left", name, done, total, 100*float64(done)/float64(total), el, eta), done == total)
		})
		p.done()
		if err != nil {
			return results, err
		}
		results = append(results, r)
		fmt.Fprintf(w, "%-14s %5d examples  %s  (chance %.3f, %.1fs)\n", r.Task, r.Examples, r.Metrics(), r.Chance, r.Seconds)
	}
	return results, nil
}

func runEval(fs *flag.FlagSet, args []string) error {
	modelPath := fs.String("model", "", "model: a directory, a .safetensors checkpoint, or a released pytorch_model.bin with config.json beside it")
	random := fs.String("random", "", "instead of -model: a preset (or JSON config) with random weights seeded by -seed, e.g. 1.5b, to time the evaluation at that size")
	seed := fs.Int64("seed", 1, "weight seed with -random")
	tasks := fs.String("tasks", "", "comma-separated tasks ("+fmt.Sprint(eval.TaskNames())+") or all")
	dataDir := fs.String("data", "", "folder holding the task files (piqa.jsonl, arc_easy.jsonl, …)")
	limit := fs.Int("limit", 0, "examples per task at most (0 = all)")
	batch := fs.Int("batch", 32, "requests (or windows) per device call")
	out := fs.String("out", "", "write the JSON report to this file (default: standard output)")
	perplexity := fs.Bool("perplexity", false, "compute per-domain held-out perplexity of -corpus instead of tasks")
	corpusDir := fs.String("corpus", "", "corpus folder built by \"blackmamba data build\" (with -perplexity)")
	seqLen := fs.Int("seq-len", 0, "window length for -perplexity (0 = min(model max length, 2048))")
	maxWindows := fs.Int64("max-windows", 0, "windows per domain at most for -perplexity (0 = all)")
	activation := fs.String("activation", "", "override the expert activation: silu or gelu (empty keeps the config's)")
	backendFlag := xla.AddFlag(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if err := checkModelFlags(*modelPath, *random); err != nil {
		return err
	}
	var names []string
	if *perplexity {
		if *corpusDir == "" {
			return fmt.Errorf("-perplexity needs -corpus DIR")
		}
	} else {
		if *tasks == "" || *dataDir == "" {
			return fmt.Errorf("-tasks and -data are required (or -perplexity with -corpus)")
		}
		var err error
		if names, err = eval.ParseTaskList(*tasks); err != nil {
			return fmt.Errorf("-tasks: %w", err)
		}
	}
	if *batch < 1 {
		return fmt.Errorf("-batch %d must be positive", *batch)
	}
	backend, choice, err := xla.New(*backendFlag)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "backend: %s\n", choice)
	start := time.Now()
	m, err := openModel(backend, *modelPath, *random, *activation, *seed)
	if err != nil {
		return err
	}
	s, err := eval.NewModelScorer(backend, m.Ctx, m.Cfg, *batch)
	if err != nil {
		return err
	}
	total, _ := m.Cfg.ParamCounts()
	rep := evalReport{Model: m.Path, Params: total, Backend: choice.String(), Activation: m.Cfg.Activation}
	if *random != "" {
		rep.Seed = *seed
	}
	if *perplexity {
		c, err := data.Open(*corpusDir)
		if err != nil {
			return err
		}
		T := *seqLen
		if T <= 0 {
			T = min(m.Cfg.MaxSeqLen, 2048)
		}
		rep.Corpus, rep.SeqLen = *corpusDir, T
		rep.Perplexity, err = s.HeldOutPerplexity(c, T, *maxWindows, func(d eval.DomainPerplexity) {
			fmt.Fprintf(os.Stderr, "%-12s perplexity %10.3f over %d tokens (%.0fs)\n", d.Domain, d.Perplexity, d.Tokens, time.Since(start).Seconds())
		})
		if err != nil {
			return err
		}
	} else {
		tok, err := tokenizer.LoadNeoX(tokenizer.DefaultDataDir())
		if err != nil {
			return err
		}
		if rep.Tasks, err = evalTasks(s, tok, *dataDir, names, *limit, *batch, os.Stderr); err != nil {
			return err
		}
	}
	rep.Seconds = time.Since(start).Seconds()
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	js = append(js, '\n')
	if *out == "" {
		_, err = os.Stdout.Write(js)
		return err
	}
	if err := os.WriteFile(*out, js, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "wrote %s\n", *out)
	return nil
}
