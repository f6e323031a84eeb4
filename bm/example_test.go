package bm_test

import (
	"fmt"

	"github.com/gomlx/gomlx/backends"
	_ "github.com/gomlx/gomlx/backends/simplego"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"

	"blackmamba/bm"
	"blackmamba/xla"
)

// Example builds a tiny BlackMamba, runs the parallel forward on a prompt and continues it
// greedily with the recurrent decoder. Its greedy continuation agrees with the forward's argmax
// at the prompt's last position.
func Example() {
	cfg := bm.MustPreset("tiny")
	cfg.Vocab, cfg.VocabReal = 64, 60 // a small vocabulary for the example
	model, err := bm.New(cfg)
	if err != nil {
		panic(err)
	}
	backend, err := backends.NewWithConfig(xla.CPUConfig) // the pure-Go CPU backend
	if err != nil {
		panic(err)
	}
	ctx := context.New()
	ctx.SetParam(initializers.ParamInitialSeed, int64(1))

	prompt := []int{5, 17, 42}
	tokens := tensors.FromFlatDataAndDimensions([]int32{5, 17, 42}, 1, 3)
	logits := context.MustExecOnce(backend, ctx, func(ctx *context.Context, tok *Node) *Node {
		return model.Forward(ctx, tok, bm.ForwardOptions{}).Logits // [1, 3, 64]
	}, tokens)
	last := tensors.MustCopyFlatData[float32](logits)[2*cfg.Vocab : 2*cfg.Vocab+cfg.VocabReal]

	dec, err := bm.NewDecoder(backend, ctx, cfg, 1, 16)
	if err != nil {
		panic(err)
	}
	out, err := dec.Generate(prompt, 5, bm.Greedy(), nil)
	if err != nil {
		panic(err)
	}
	fmt.Println("logits shape:", logits.Shape())
	fmt.Println("generated:", len(out), "tokens; first agrees with the forward:", out[0] == bm.Greedy().Sample(last))
	// Output:
	// logits shape: (Float32)[1 3 64]
	// generated: 5 tokens; first agrees with the forward: true
}
