package bm

import (
	"math"
	"math/rand"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// mtMoERef is the float64 MoE of SPEC.md §3 for tokens x [T][d] (flat), with the expert choice
// given (argmax of the logits when choice is nil). Returns the output [T·d], the choices and the
// logits [T·E].
func mtMoERef(cfg Config, experts int, x, rw, rb, fc1, fc2 []float64, choice []int) ([]float64, []int, []float64) {
	d, f := cfg.Dim, cfg.FFN
	numT := len(x) / d
	logits := make([]float64, numT*experts)
	var out []float64
	outChoice := make([]int, numT)
	for t := range numT {
		row := x[t*d : (t+1)*d]
		best := 0
		for e := range experts {
			l := rb[e]
			for i := range d {
				l += row[i] * rw[i*experts+e]
			}
			logits[t*experts+e] = l
			if l > logits[t*experts+best] {
				best = e
			}
		}
		if choice != nil {
			best = choice[t]
		}
		outChoice[t] = best
		gate := 1 / (1 + math.Exp(-logits[t*experts+best]))
		y := mtGatedMLPRef(cfg, row, fc1[best*d*2*f:(best+1)*d*2*f], fc2[best*f*d:(best+1)*f*d])
		for i := range y {
			out = append(out, gate*y[i])
		}
	}
	return out, outChoice, logits
}

// mtDenseMoE runs every expert on every token and keeps the chosen one's output (times the
// gate): E times the FLOPs of MoE, the graph reference for the dispatch.
func mtDenseMoE(ctx *context.Context, cfg Config, experts int, x *Node, choice *Node) *Node {
	w := moeVariables(ctx, x.Graph(), cfg, experts)
	h := ComputeEinsum(cfg, "td,edf->etf", x, w.fc1)
	ys := ComputeEinsum(cfg, "etf,efd->etd", gatedActivation(cfg, h), w.fc2) // [E, T, d]
	oneHot := OneHot(choice, experts, dtypes.Float32)                        // [T, E]
	logits := Add(Einsum("td,de->te", x, w.routerW), InsertAxes(w.routerB, 0))
	gate := ReduceSum(Mul(Sigmoid(logits), oneHot), -1)
	y := ReduceSum(Mul(ys, InsertAxes(Transpose(oneHot, 0, 1), -1)), 0)
	return Mul(y, InsertAxes(gate, -1))
}

// TestMoEDispatch checks that the blocked dispatch computes every token with its argmax
// expert: against a float64 reference, for several token counts, expert counts and block
// sizes (block 1 = one expert per token; 300 tokens exercise the chunked prefix sum), with
// balanced and fully skewed routing; plus the counts and the bfloat16 path against the dense
// run-all-experts graph.
func TestMoEDispatch(t *testing.T) {
	for _, tc := range []struct {
		name    string
		dims    []int // input dims, last is d
		experts int
		block   int // 0 = automatic
		skew    bool
		dtype   string
	}{
		{"BTd-auto", []int{2, 12, 8}, 4, 0, false, "float32"},
		{"BTd-block1", []int{2, 12, 8}, 4, 1, false, "float32"},
		{"BTd-block4", []int{2, 12, 8}, 4, 4, false, "float32"},
		{"Nd-block3", []int{5, 8}, 2, 3, false, "float32"},
		{"single-token", []int{1, 1, 8}, 8, 0, false, "float32"},
		{"300-tokens-block16", []int{3, 100, 8}, 8, 16, false, "float32"},
		{"all-to-one-expert", []int{2, 12, 8}, 4, 4, true, "float32"},
		{"bfloat16", []int{2, 12, 8}, 4, 4, false, "bfloat16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := mtConfig()
			cfg.ComputeDType = tc.dtype
			rng := rand.New(rand.NewSource(21))
			x, xv := mtRandom(rng, 1, tc.dims...)
			ctx := mtCtx(8)
			ctx.SetParam(ParamMoEBlock, tc.block)
			fn := func(ctx *context.Context, x *Node) []*Node {
				r := MoEWithStats(ctx.In("moe"), cfg, tc.experts, x, RoutingArgmax)
				flat, _ := flattenTokens(x)
				dense := mtDenseMoE(ctx.In("moe").Reuse(), cfg, tc.experts, flat, r.Choice)
				return []*Node{r.Out, r.Counts, r.Choice, dense}
			}
			exec := context.MustNewExec(mtBackend(t), ctx, fn)
			exec.MustExec(x)
			if tc.skew {
				bias := make([]float64, tc.experts)
				bias[tc.experts-1] = 50
				if err := ctx.InspectVariable("/moe", "router_bias").SetValue(mtF32Tensor(bias, tc.experts)); err != nil {
					t.Fatal(err)
				}
			}
			outs := exec.MustExec(x)
			if got, want := outs[0].Shape().Dimensions, tc.dims; len(got) != len(want) {
				t.Fatalf("output dims %v, want %v", got, want)
			}
			rw, rb := mtVar(t, ctx, "/moe", "router_weight"), mtVar(t, ctx, "/moe", "router_bias")
			fc1, fc2 := mtVar(t, ctx, "/moe", "fc1"), mtVar(t, ctx, "/moe", "fc2")
			want, choice, _ := mtMoERef(cfg, tc.experts, xv, rw, rb, fc1, fc2, nil)
			gotChoice := mtValues(t, outs[2])
			counts := make([]float64, tc.experts)
			for i, c := range choice {
				if int(gotChoice[i]) != c {
					t.Fatalf("token %d: choice %v, reference argmax %d", i, gotChoice[i], c)
				}
				counts[c]++
			}
			if tc.skew && counts[tc.experts-1] != float64(len(choice)) {
				t.Fatalf("skewed router: counts %v, want all tokens on the last expert", counts)
			}
			mtAssertClose(t, "counts", mtValues(t, outs[1]), counts, 0, 0)
			got := mtValues(t, outs[0])
			if tc.dtype == "float32" {
				mtAssertClose(t, "dispatch vs float64 reference", got, want, 0, 1e-5)
			} else {
				mtAssertClose(t, "bf16 dispatch vs float64 reference", got, want, 0, 5e-2)
			}
			mtAssertClose(t, "dispatch vs dense run-all-experts", got, mtValues(t, outs[3]), 0, 1e-5)
		})
	}
}

// TestMoEStepMatchesMoE checks that the decoding step (gathering only the chosen experts)
// gives the same output and choices as the full block with argmax routing.
func TestMoEStepMatchesMoE(t *testing.T) {
	cfg := mtConfig()
	const experts = 4
	rng := rand.New(rand.NewSource(2))
	x, _ := mtRandom(rng, 1, 6, cfg.Dim)
	ctx := mtCtx(4)
	outs := context.MustNewExec(mtBackend(t), ctx, func(ctx *context.Context, x *Node) []*Node {
		out, _, _ := MoE(ctx.In("moe"), cfg, experts, x, RoutingArgmax)
		r := MoEWithStats(ctx.In("moe").Reuse(), cfg, experts, x, RoutingArgmax)
		stepOut, stepChoice := MoEStep(ctx.In("moe").Reuse(), cfg, experts, x)
		return []*Node{out, r.Choice, stepOut, stepChoice}
	}).MustExec(x)
	mtAssertClose(t, "MoEStep vs MoE output", mtValues(t, outs[2]), mtValues(t, outs[0]), 0, 1e-6)
	mtAssertClose(t, "MoEStep vs MoE choice", mtValues(t, outs[3]), mtValues(t, outs[1]), 0, 0)
}

// TestMoERoutes checks each training route: the Sinkhorn routes choose what the float64
// Sinkhorn reference chooses on the same logits and the output follows that choice; switch
// routing returns the load-balancing loss SwitchAuxWeight·E·Σ f_e·P_e.
func TestMoERoutes(t *testing.T) {
	const experts = 4
	for _, route := range []string{RoutingSinkhorn, RoutingSinkhornVanilla, RoutingSwitch} {
		t.Run(route, func(t *testing.T) {
			cfg := mtConfig()
			rng := rand.New(rand.NewSource(17))
			x, xv := mtRandom(rng, 1, 4, 16, cfg.Dim)
			ctx := mtCtx(5)
			outs := context.MustNewExec(mtBackend(t), ctx, func(ctx *context.Context, x *Node) []*Node {
				r := MoEWithStats(ctx.In("moe"), cfg, experts, x, route)
				aux := r.Aux
				if aux == nil {
					aux = ScalarZero(x.Graph(), dtypes.Float32)
				}
				return []*Node{r.Out, r.Choice, aux}
			}).MustExec(x)
			rw, rb := mtVar(t, ctx, "/moe", "router_weight"), mtVar(t, ctx, "/moe", "router_bias")
			fc1, fc2 := mtVar(t, ctx, "/moe", "fc1"), mtVar(t, ctx, "/moe", "fc2")
			gotChoice := mtValues(t, outs[1])
			choice := make([]int, len(gotChoice))
			for i, c := range gotChoice {
				choice[i] = int(c)
			}
			want, _, logits := mtMoERef(cfg, experts, xv, rw, rb, fc1, fc2, choice)
			mtAssertClose(t, "output with the route's choice", mtValues(t, outs[0]), want, 0, 1e-5)
			numT := len(choice)
			rows := make([][]float64, numT)
			for i := range rows {
				rows[i] = logits[i*experts : (i+1)*experts]
			}
			switch route {
			case RoutingSwitch:
				frac := make([]float64, experts)
				prob := make([]float64, experts)
				for i, row := range rows {
					best, z := 0, 0.0
					for e, l := range row {
						z += math.Exp(l)
						if l > row[best] {
							best = e
						}
					}
					if best != choice[i] {
						t.Fatalf("switch: token %d choice %d, argmax %d", i, choice[i], best)
					}
					frac[best] += 1 / float64(numT)
					for e, l := range row {
						prob[e] += math.Exp(l) / z / float64(numT)
					}
				}
				aux := 0.0
				for e := range frac {
					aux += frac[e] * prob[e]
				}
				aux *= cfg.SwitchAuxWeight * experts
				mtAssertClose(t, "switch aux loss", mtValues(t, outs[2]), []float64{aux}, 0, 1e-5)
			default:
				refChoice, _, _ := SinkhornReference(rows, route, SinkhornRounds(cfg, route), cfg.SinkhornTol)
				for i := range refChoice {
					if refChoice[i] != choice[i] {
						t.Fatalf("token %d: MoE chose %d, Sinkhorn reference %d", i, choice[i], refChoice[i])
					}
				}
			}
		})
	}
}

// TestMoEGradients checks the gradients of MoE w.r.t. its input, router and expert weights
// against finite differences, for each route. The expert choice is piecewise constant: the
// check fails loudly if a perturbation changed it (a tie), instead of comparing across a jump.
func TestMoEGradients(t *testing.T) {
	const experts = 4
	for _, route := range []string{RoutingArgmax, RoutingSinkhorn, RoutingSinkhornVanilla, RoutingSwitch} {
		for _, block := range []int{0, 1} {
			if block == 1 && route != RoutingArgmax {
				continue
			}
			t.Run(route+map[int]string{0: "", 1: "/block1"}[block], func(t *testing.T) {
				cfg := mtConfig()
				rng := rand.New(rand.NewSource(31))
				x, _ := mtRandom(rng, 1, 2, 10, cfg.Dim)
				ctx := mtCtx(6)
				ctx.SetParam(ParamMoEBlock, block)
				mtGradCheck(t, ctx, x, "/moe", []string{"router_weight", "router_bias", "fc1", "fc2"},
					func(ctx *context.Context, x *Node) (*Node, *Node) {
						r := MoEWithStats(ctx.In("moe"), cfg, experts, x, route)
						loss := mtWeightedSum(r.Out, 1)
						if r.Aux != nil {
							loss = Add(loss, MulScalar(r.Aux, 100))
						}
						return loss, r.Choice
					}, 1e-3, 1e-2, 41)
			})
		}
	}
}

// TestMoEBlockSizes checks the automatic block size and the row bound.
func TestMoEBlockSizes(t *testing.T) {
	for _, tc := range []struct{ tokens, experts, block, rows int }{
		{1, 8, 1, 1},
		{31, 8, 1, 31},
		{64, 8, 2, 72},
		{128, 8, 4, 152},
		{16384, 8, 512, 19968},
		{1 << 20, 8, 512, 1052160},
	} {
		if b := MoEBlockSize(tc.tokens, tc.experts); b != tc.block {
			t.Errorf("MoEBlockSize(%d, %d) = %d, want %d", tc.tokens, tc.experts, b, tc.block)
		}
		if r := MoEDispatchRows(tc.tokens, tc.experts, tc.block); r != tc.rows {
			t.Errorf("MoEDispatchRows(%d, %d, %d) = %d, want %d", tc.tokens, tc.experts, tc.block, r, tc.rows)
		}
	}
}

// TestExclusiveCumsumTokens checks the chunked prefix sum against a running sum, across the
// chunk boundary and with a partial last chunk.
func TestExclusiveCumsumTokens(t *testing.T) {
	for _, n := range []int{1, 7, 128, 129, 300} {
		rng := rand.New(rand.NewSource(int64(n)))
		vals := make([]float32, n*3)
		for i := range vals {
			vals[i] = float32(rng.Intn(3))
		}
		got := mtValues(t, MustExecOnce(mtBackend(t), exclusiveCumsumTokens, tensors.FromFlatDataAndDimensions(vals, n, 3)))
		want := make([]float64, n*3)
		for c := range 3 {
			s := 0.0
			for r := range n {
				want[r*3+c] = s
				s += float64(vals[r*3+c])
			}
		}
		mtAssertClose(t, "exclusive cumsum", got, want, 0, 0)
	}
}

// TestCheckBlocks runs the backend self-check on the CPU backend.
func TestCheckBlocks(t *testing.T) {
	report, err := CheckBlocks(mtBackend(t))
	for _, line := range report {
		t.Log(line)
	}
	if err != nil {
		t.Fatal(err)
	}
}
