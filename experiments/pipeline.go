package experiments

import (
	"github.com/gomlx/gomlx/backends"

	"blackmamba/bm"
	"blackmamba/xla/pjrtexec"
)

// The resident decoding calls on the XLA backend go through pjrtexec, which launches them
// without waiting for each to finish (bm.RegisterPipeline). Every program that uses this
// package (the command and the notebooks) gets it.
func init() {
	bm.RegisterPipeline("xla", func(exec backends.Executable, inputs []backends.Buffer, donated int) (bm.Pipeline, error) {
		p, err := pjrtexec.Start(exec, inputs, donated, pjrtexec.DefaultDepth)
		if err != nil {
			return nil, err
		}
		return p, nil
	})
}
