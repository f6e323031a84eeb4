package train

import (
	"fmt"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/distributed"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// DataAxis names the axis of the device mesh over which data-parallel training splits the batch.
const DataAxis = "data"

// dataParallel is the device layout of a trainer with Config.Devices = N > 1: a one-axis mesh of
// N devices named DataAxis, token batches [B, T+1] split on axis 0 (B/N rows per device) and
// every variable (model weights, optimizer moments, step counter) replicated on all devices.
//
// The train and evaluation steps stay the same logical graphs as on one device: XLA's SPMD
// partitioner (GoMLX's AutoSharding strategy) partitions them from the input and output
// shardings, inserting the all-reduces of the gradients (sums over the batch) and of the loss and
// extras. So the step's outputs are the global-batch values, equal to those of one device on the
// same batch up to the order of the floating-point reductions.
type dataParallel struct {
	devices    int
	mesh       *distributed.DeviceMesh
	batch      *distributed.ShardingSpec // [B, T+1] split on B over DataAxis
	replicated *distributed.ShardingSpec
	sharded    int // variables split along their first axis (Config.Sharded), moments included
}

// newDataParallel returns the layout for devices > 1 devices of backend, checking that the backend
// has that many.
func newDataParallel(backend backends.Backend, devices int) (*dataParallel, error) {
	if have := backend.NumDevices(); devices > have {
		return nil, fmt.Errorf("train config: devices %d exceeds the %d device(s) of backend %s", devices, have, backend.Name())
	}
	mesh, err := distributed.NewDeviceMesh([]int{devices}, []string{DataAxis})
	if err != nil {
		return nil, fmt.Errorf("train config: device mesh of %d devices: %w", devices, err)
	}
	batch, err := distributed.BuildSpec(mesh).S(DataAxis).R().Done()
	if err != nil {
		return nil, fmt.Errorf("train config: batch sharding over %d devices: %w", devices, err)
	}
	return &dataParallel{devices: devices, mesh: mesh, batch: batch, replicated: distributed.NewReplicatedShardingSpec(mesh)}, nil
}

// configure makes e compile its graphs for the mesh: the one input (the token batch) split over
// DataAxis, every output (loss, extras and updated variables) replicated.
func (dp *dataParallel) configure(e *context.Exec) *context.Exec {
	return e.AutoSharding(dp.mesh).WithInputShardingSpecs(dp.batch).WithOutputShardingSpecs(dp.replicated)
}

// exec runs e on the batch in ([B, T+1] on the host), split into one shard of B/N rows per device,
// and returns the outputs of the first device (all outputs are replicated). The other devices'
// copies and the input shards are freed.
func (dp *dataParallel) exec(e *context.Exec, in *tensors.Tensor) ([]*tensors.Tensor, error) {
	sharded, err := dp.shard(in)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sharded.FinalizeAll() }()
	outs, err := e.Exec(sharded)
	if err != nil {
		return nil, err
	}
	if len(outs)%dp.devices != 0 {
		return nil, fmt.Errorf("%d outputs from %d devices: not a multiple", len(outs), dp.devices)
	}
	n := len(outs) / dp.devices
	for _, x := range outs[n:] {
		x.FinalizeAll()
	}
	return outs[:n], nil
}

// shardVariable makes v split along its first axis over DataAxis: each device holds
// 1/devices of its rows. It must be called before v's value is first distributed.
func (dp *dataParallel) shardVariable(v *context.Variable) error {
	shape := v.Shape()
	if shape.Rank() == 0 || shape.Dim(0)%dp.devices != 0 {
		return fmt.Errorf("train config: sharded variable %s %s: its first axis cannot be split over %d devices",
			v.ScopeAndName(), shape, dp.devices)
	}
	b := distributed.BuildSpec(dp.mesh).S(DataAxis)
	for range shape.Rank() - 1 {
		b = b.R()
	}
	spec, err := b.Done()
	if err == nil {
		err = v.SetShardingSpec(spec)
	}
	if err != nil {
		return fmt.Errorf("train config: sharding variable %s %s over %d devices: %w", v.ScopeAndName(), shape, dp.devices, err)
	}
	dp.sharded++
	return nil
}

// setOutputSpecs gives the graph g that e is compiling its output shardings: context.Exec
// returns the variables that g changes first (in the context's variable order), then the graph
// function's own outputs. Each changed variable keeps its own sharding (split variables stay
// split, so their update runs on their shards), the rest is replicated. Called at the end of
// the graph function, before e compiles g.
func (dp *dataParallel) setOutputSpecs(e *context.Exec, ctx *context.Context, g *Graph) {
	var specs []*distributed.ShardingSpec
	for v := range ctx.IterVariables() {
		if v.ChangedInGraph(g) {
			spec := v.ShardingSpec()
			if spec == nil {
				spec = dp.replicated
			}
			specs = append(specs, spec)
		}
	}
	e.WithOutputShardingSpecs(append(specs, dp.replicated)...) // the last spec repeats
}

// preCompile compiles e for batches shaped like in, split over the mesh.
func (dp *dataParallel) preCompile(e *context.Exec, in *tensors.Tensor) error {
	sharded, err := dp.shard(in)
	if err != nil {
		return err
	}
	defer func() { _ = sharded.FinalizeAll() }()
	return e.PreCompile(sharded)
}

// shard splits the batch in ([B, T+1] on the host) into one shard of B/N rows per device.
func (dp *dataParallel) shard(in *tensors.Tensor) (*distributed.Tensor, error) {
	sharded, err := distributed.ShardTensor(dp.batch, in)
	if err != nil {
		return nil, fmt.Errorf("splitting the batch %s over %d devices: %w", in.Shape(), dp.devices, err)
	}
	return sharded, nil
}
