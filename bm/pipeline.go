package bm

import (
	"fmt"
	"reflect"
	"sync"
	"unsafe"

	"github.com/gomlx/gomlx/backends"
	. "github.com/gomlx/gomlx/pkg/core/graph"
)

// Launching resident calls ahead of the device.
//
// A resident call (decode_resident.go) takes only buffers already on the device and gives them
// back in place, so the host has nothing to wait for between calls until it reads the tokens.
// GoMLX's Exec waits for each execution to finish, though (go-xla's execute awaits it), and
// the device idles while the host prepares the next call: about half a millisecond per call on
// an H200 for the 1.5B step, against 0.54 ms of kernels per step. A Pipeline, which a backend
// registers (RegisterPipeline; blackmamba/xla/pjrtexec for the XLA backend), launches the
// calls of one compiled graph without that wait, keeping a few in flight.

// Pipeline runs calls of one compiled graph whose first inputs are donated and replaced by its
// outputs (aliased), the other inputs kept. See RegisterPipeline.
type Pipeline interface {
	// Call enqueues one call on the current buffers; it may return before the call ends.
	Call() error
	// Read copies the current value of donated input i into dst (its size in bytes), waiting
	// for the calls that write it.
	Read(i int, dst []byte) error
	// Close waits for every call and gives the buffers passed as the donated inputs the last
	// call's outputs. After a failed call they are left without a value and Close reports it.
	Close() error
}

// PipelineStarter starts a Pipeline of exec (compiled by the backend it is registered for) on
// inputs, of which the first donated are donated and replaced by the outputs in order: it
// takes over those buffers until Close.
type PipelineStarter func(exec backends.Executable, inputs []backends.Buffer, donated int) (Pipeline, error)

var (
	pipelinesMu sync.Mutex
	pipelines   = map[string]PipelineStarter{}
)

// RegisterPipeline makes the resident decoding calls on the backend named backendName (as
// backends.Backend.Name reports it) go through start, unless a decoder asks for SyncCalls.
// blackmamba's commands register the XLA backend's (blackmamba/xla/pjrtexec). A nil start
// removes the backend's.
func RegisterPipeline(backendName string, start PipelineStarter) {
	pipelinesMu.Lock()
	defer pipelinesMu.Unlock()
	if start == nil {
		delete(pipelines, backendName)
		return
	}
	pipelines[backendName] = start
}

// pipelineFor returns the starter registered for backend, or nil.
func pipelineFor(backend backends.Backend) PipelineStarter {
	pipelinesMu.Lock()
	defer pipelinesMu.Unlock()
	return pipelines[backend.Name()]
}

var executableType = reflect.TypeOf((*backends.Executable)(nil)).Elem()

// graphExecutable returns the backend's executable of compiled graph g. GoMLX v0.26 keeps it in
// an unexported field; its type is checked, so that another version gives an error.
func graphExecutable(g *Graph) (backends.Executable, error) {
	f := reflect.ValueOf(g).Elem().FieldByName("executable")
	if !f.IsValid() || f.Type() != executableType {
		return nil, fmt.Errorf("bm: graph.Graph has no executable field of type %s (GoMLX changed)", executableType)
	}
	e := *(*backends.Executable)(unsafe.Pointer(f.UnsafeAddr()))
	if e == nil {
		return nil, fmt.Errorf("bm: graph %q is not compiled", g.Name())
	}
	return e, nil
}
