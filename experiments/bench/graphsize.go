package bench

import (
	"fmt"
	"slices"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"blackmamba/bm"
)

// GraphSize builds (without compiling or running) the training loss of cfg at [batch, seqLen]
// and its gradients with respect to every trainable variable, and reports the number of graph
// operations: the size of what the backend's compiler receives, which drives XLA's compilation
// time. Extra holds "nodes_forward", "nodes_total" (forward plus gradients), "variables", and
// "op:<type>" for the most frequent operation types.
func GraphSize(backend backends.Backend, cfg bm.Config, batch, seqLen int) Row {
	row := Row{Bench: "graph", Variant: fmt.Sprintf("%s %s routing=%s", cfg.Name, cfg.ComputeDType, cfg.Routing),
		Shape: fmt.Sprintf("batch %d x %d", batch, seqLen), PeakBytes: -1}
	err := catch(func() error {
		m, err := bm.New(cfg)
		if err != nil {
			return err
		}
		start := time.Now()
		ctx := context.New()
		g := NewGraph(backend, "graph_size")
		tokens := Parameter(g, "tokens", shapes.Make(dtypes.Int32, batch, seqLen+1))
		ctx.SetTraining(g, true)
		loss, _ := m.Loss(ctx, tokens, bm.ForwardOptions{})
		forward := len(g.Nodes())
		var vals []*Node
		for v := range ctx.IterVariables() {
			if v.Trainable {
				vals = append(vals, v.ValueGraph(g))
			}
		}
		Gradient(loss, vals...)
		nodes := g.Nodes()
		row.CompileS = time.Since(start).Seconds()
		counts := map[string]int{}
		for _, n := range nodes {
			counts[n.Type().String()]++
		}
		types := make([]string, 0, len(counts))
		for t := range counts {
			types = append(types, t)
		}
		slices.SortFunc(types, func(a, b string) int { return counts[b] - counts[a] })
		row.Extra = map[string]float64{"nodes_forward": float64(forward), "nodes_total": float64(len(nodes)),
			"variables": float64(len(vals))}
		for _, t := range types[:min(6, len(types))] {
			row.Extra["op:"+t] = float64(counts[t])
		}
		return nil
	})
	if err != nil {
		row.Err = err.Error()
	}
	return row
}
