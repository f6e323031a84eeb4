// Package pjrtexec launches calls of a compiled XLA executable without waiting for each to
// finish, so that the host prepares the next call while the device runs the previous one.
//
// GoMLX v0.26 executes through go-xla, whose Execute waits for the device to finish before it
// returns. A batch-1 decoding step of a large model is a few hundred short kernels, and its call
// costs the host about half a millisecond (PJRT's handling of some 230 arguments, the CUDA
// graph's launch, GoMLX's bookkeeping): with a wait after every call the GPU idles for all of
// it. A Pipeline calls PJRT's execute itself, keeps each call's completion event, and waits only
// when more than Depth calls are in flight; the device orders the calls through the buffers
// they share.
//
// It reaches the PJRT handles behind GoMLX's XLA executable and buffers through unexported
// fields of go-xla v0.1.4 and GoMLX v0.26 (checked by name and type, so that other versions give
// an error rather than a crash) and calls the plugin's functions from its function table, whose
// offsets come from go-xla's own cgo declaration of that table.
package pjrtexec

import (
	"errors"
	"fmt"
	"reflect"
	"unsafe"

	"github.com/gomlx/go-xla/pkg/pjrt"
	"github.com/gomlx/gomlx/backends"
	gomlxxla "github.com/gomlx/gomlx/backends/xla"
)

// DefaultDepth is how many calls a Pipeline keeps in flight unless told otherwise: with two the
// device always has the next call queued while the host prepares a third.
const DefaultDepth = 2

// Pipeline runs calls of one executable whose first N inputs are donated and whose N outputs
// replace them (the outputs aliased to those inputs, in order), the other inputs (weights) kept
// as they are. While it runs, it owns the device buffers of the N donated inputs; Close gives
// back the last call's outputs in their place.
type Pipeline struct {
	f      fns
	exec   unsafe.Pointer // PJRT_LoadedExecutable*
	device unsafe.Pointer // PJRT_Device*, nil for a non-portable executable
	bufs   []*pjrt.Buffer // the donated inputs' Go buffers, emptied while the pipeline runs
	cur    []unsafe.Pointer
	keep   []int64
	outs   []unsafe.Pointer
	events []unsafe.Pointer // the completion events of the calls in flight, oldest first
	depth  int
	calls  int
	err    error // the first failure; the pipeline stops there
	closed bool
}

// Start returns a pipeline of calls of exec (an executable of GoMLX's XLA backend) on inputs:
// the first donated of them are donated to every call and replaced by its outputs, the others
// are read only and must stay alive until Close. depth (at least 1) is how many calls may be in
// flight; Call waits for the oldest beyond that.
func Start(exec backends.Executable, inputs []backends.Buffer, donated, depth int) (*Pipeline, error) {
	if depth < 1 {
		return nil, fmt.Errorf("pjrtexec: depth %d: at least one call must be allowed in flight", depth)
	}
	e, ok := exec.(*gomlxxla.Executable)
	if !ok || e == nil {
		return nil, fmt.Errorf("pjrtexec: executable of type %T, not of GoMLX's XLA backend", exec)
	}
	ev := reflect.ValueOf(e).Elem()
	le, err := field[*pjrt.LoadedExecutable](ev, "exec")
	if err != nil {
		return nil, err
	}
	portable, err := fieldBool(ev, "portable")
	if err != nil {
		return nil, err
	}
	if le == nil {
		return nil, errors.New("pjrtexec: the executable has been freed")
	}
	if le.NumOutputs != donated {
		return nil, fmt.Errorf("pjrtexec: the executable has %d outputs for %d donated inputs; each output must replace one", le.NumOutputs, donated)
	}
	if donated < 1 || donated > len(inputs) {
		return nil, fmt.Errorf("pjrtexec: %d donated inputs of %d", donated, len(inputs))
	}
	p := &Pipeline{depth: depth, keep: make([]int64, 0, len(inputs)-donated)}
	lv := reflect.ValueOf(le).Elem()
	wrapper, err := fieldPtr(lv, "wrapper")
	if err != nil {
		return nil, err
	}
	if p.exec, err = ptrOf(wrapper.Elem(), "c"); err != nil {
		return nil, err
	}
	if p.exec == nil {
		return nil, errors.New("pjrtexec: the executable has been freed")
	}
	plugin, err := fieldPtr(lv, "plugin")
	if err != nil {
		return nil, err
	}
	if err := p.setFns(plugin.Elem()); err != nil {
		return nil, err
	}
	if portable {
		client, err := fieldPtr(lv, "client")
		if err != nil {
			return nil, err
		}
		devs := client.Elem().FieldByName("addressableDevices")
		if !devs.IsValid() || devs.Kind() != reflect.Slice || devs.Len() == 0 {
			return nil, errors.New("pjrtexec: pjrt.Client has no addressableDevices (go-xla changed)")
		}
		if p.device, err = ptrOf(devs.Index(0).Elem(), "cDevice"); err != nil {
			return nil, err
		}
	}
	p.cur = make([]unsafe.Pointer, len(inputs))
	p.outs = make([]unsafe.Pointer, donated)
	for i, in := range inputs {
		b, ok := in.(*pjrt.Buffer)
		if !ok || b == nil {
			return nil, fmt.Errorf("pjrtexec: input %d is a %T, not a buffer of GoMLX's XLA backend", i, in)
		}
		h, err := handle(b)
		if err != nil {
			return nil, fmt.Errorf("pjrtexec: input %d: %w", i, err)
		}
		if h == nil {
			return nil, fmt.Errorf("pjrtexec: input %d has been freed or donated", i)
		}
		p.cur[i] = h
		if i >= donated {
			p.keep = append(p.keep, int64(i))
		}
	}
	for i := range donated {
		for j := range i {
			if p.cur[j] == p.cur[i] {
				return nil, fmt.Errorf("pjrtexec: inputs %d and %d are the same buffer; a donated buffer can be given once", j, i)
			}
		}
	}
	// Take the donated buffers: their Go wrappers hold no handle until Close.
	p.bufs = make([]*pjrt.Buffer, donated)
	for i := range donated {
		p.bufs[i] = inputs[i].(*pjrt.Buffer)
		if err := setHandle(p.bufs[i], nil); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Call enqueues one call on the current buffers and returns once it is enqueued and at most
// Depth calls are in flight. After an error the pipeline is stopped: Close reports it.
func (p *Pipeline) Call() error {
	if p.err != nil {
		return p.err
	}
	if p.closed {
		return errors.New("pjrtexec: Call after Close")
	}
	n := len(p.outs)
	clear(p.outs)
	event, err := p.f.execute(p.exec, p.device, p.cur, p.keep, p.outs)
	if err != nil {
		// The donated buffers' state after a failed execute is not known: none is given back.
		p.err = fmt.Errorf("pjrtexec: call %d: %w", p.calls+1, err)
		for i := range n {
			p.cur[i] = nil
		}
		return p.err
	}
	p.calls++
	for i := range n {
		// The donated handle no longer owns memory; its output took it over.
		if err := p.f.destroy(p.cur[i]); err != nil && p.err == nil {
			p.err = err
		}
		p.cur[i] = p.outs[i]
	}
	if event != nil {
		p.events = append(p.events, event)
	}
	for len(p.events) > p.depth {
		if err := p.waitOldest(); err != nil {
			return err
		}
	}
	return p.err
}

// Calls reports how many calls were enqueued.
func (p *Pipeline) Calls() int { return p.calls }

// waitOldest waits for the oldest call in flight.
func (p *Pipeline) waitOldest() error {
	ev := p.events[0]
	p.events = p.events[1:]
	if err := p.f.await(ev); err != nil && p.err == nil {
		p.err = err
	}
	return p.err
}

// Read copies the current value of donated input i (the last call's output i) into dst, which
// must have its size in bytes; it waits for the calls that write it.
func (p *Pipeline) Read(i int, dst []byte) error {
	if p.err != nil {
		return p.err
	}
	if p.closed {
		return errors.New("pjrtexec: Read after Close")
	}
	if i < 0 || i >= len(p.bufs) {
		return fmt.Errorf("pjrtexec: Read of input %d: only the %d donated inputs change", i, len(p.bufs))
	}
	b := p.bufs[i]
	if err := setHandle(b, p.cur[i]); err != nil {
		return err
	}
	err := b.ToHost(dst)
	if e := setHandle(b, nil); err == nil {
		err = e
	}
	if err != nil {
		return fmt.Errorf("pjrtexec: reading input %d: %w", i, err)
	}
	return nil
}

// Close waits for every call in flight and gives the donated inputs' Go buffers the last
// call's outputs. After an error in a call they are left empty (freed) and the error is
// returned. Close may be called more than once.
func (p *Pipeline) Close() error {
	if p.closed {
		return p.err
	}
	p.closed = true
	for len(p.events) > 0 {
		_ = p.waitOldest()
	}
	for i, b := range p.bufs {
		if p.cur[i] == nil {
			continue
		}
		if err := setHandle(b, p.cur[i]); err != nil && p.err == nil {
			p.err = err
		}
	}
	return p.err
}

// setFns reads the plugin's function table (go-xla's Plugin.api, a *C.PJRT_Api).
func (p *Pipeline) setFns(plugin reflect.Value) error {
	api := plugin.FieldByName("api")
	if !api.IsValid() || api.Kind() != reflect.Pointer || api.Type().Elem().Kind() != reflect.Struct {
		return errors.New("pjrtexec: pjrt.Plugin has no api pointer to a struct (go-xla changed)")
	}
	base := unsafe.Pointer(api.Pointer())
	if base == nil {
		return errors.New("pjrtexec: the PJRT plugin has no function table")
	}
	table := api.Type().Elem()
	size, ok := table.FieldByName("struct_size")
	if !ok {
		return errors.New("pjrtexec: the PJRT function table has no struct_size")
	}
	have := *(*uintptr)(unsafe.Add(base, size.Offset))
	names := []string{"PJRT_LoadedExecutable_Execute", "PJRT_Event_Await", "PJRT_Event_Destroy",
		"PJRT_Buffer_Destroy", "PJRT_Error_Message", "PJRT_Error_Destroy"}
	ptrs := make([]unsafe.Pointer, len(names))
	for i, name := range names {
		f, ok := table.FieldByName(name)
		if !ok || f.Type.Kind() != reflect.Pointer {
			return fmt.Errorf("pjrtexec: the PJRT function table has no %s (go-xla changed)", name)
		}
		if f.Offset+f.Type.Size() > have {
			return fmt.Errorf("pjrtexec: the PJRT plugin's function table (%d bytes) ends before %s", have, name)
		}
		ptrs[i] = *(*unsafe.Pointer)(unsafe.Add(base, f.Offset))
		if ptrs[i] == nil {
			return fmt.Errorf("pjrtexec: the PJRT plugin has no %s", name)
		}
	}
	p.f.set(ptrs[0], ptrs[1], ptrs[2], ptrs[3], ptrs[4], ptrs[5])
	return nil
}

// handle returns the PJRT_Buffer* behind b (nil once freed or donated).
func handle(b *pjrt.Buffer) (unsafe.Pointer, error) {
	w, err := fieldPtr(reflect.ValueOf(b).Elem(), "wrapper")
	if err != nil {
		return nil, err
	}
	if w.IsNil() {
		return nil, nil
	}
	return ptrOf(w.Elem(), "c")
}

// setHandle makes b's wrapper hold h (nil: none).
func setHandle(b *pjrt.Buffer, h unsafe.Pointer) error {
	w, err := fieldPtr(reflect.ValueOf(b).Elem(), "wrapper")
	if err != nil {
		return err
	}
	if w.IsNil() {
		return errors.New("pjrtexec: a buffer without its wrapper")
	}
	c := w.Elem().FieldByName("c")
	if !c.IsValid() || c.Kind() != reflect.Pointer {
		return errors.New("pjrtexec: pjrt buffer wrapper has no c pointer (go-xla changed)")
	}
	*(*unsafe.Pointer)(unsafe.Pointer(c.UnsafeAddr())) = h
	return nil
}

// fieldPtr returns struct v's pointer field name.
func fieldPtr(v reflect.Value, name string) (reflect.Value, error) {
	f := v.FieldByName(name)
	if !f.IsValid() || f.Kind() != reflect.Pointer {
		return reflect.Value{}, fmt.Errorf("pjrtexec: %s has no pointer field %s (go-xla or GoMLX changed)", v.Type(), name)
	}
	return f, nil
}

// ptrOf returns the address held by struct v's pointer field name.
func ptrOf(v reflect.Value, name string) (unsafe.Pointer, error) {
	f, err := fieldPtr(v, name)
	if err != nil {
		return nil, err
	}
	return unsafe.Pointer(f.Pointer()), nil
}

// field reads struct v's field name of type T.
func field[T any](v reflect.Value, name string) (T, error) {
	var zero T
	f := v.FieldByName(name)
	if !f.IsValid() || f.Type() != reflect.TypeOf(zero) {
		return zero, fmt.Errorf("pjrtexec: %s has no field %s of type %T (GoMLX changed)", v.Type(), name, zero)
	}
	return *(*T)(unsafe.Pointer(f.UnsafeAddr())), nil
}

// fieldBool reads struct v's bool field name.
func fieldBool(v reflect.Value, name string) (bool, error) {
	f := v.FieldByName(name)
	if !f.IsValid() || f.Kind() != reflect.Bool {
		return false, fmt.Errorf("pjrtexec: %s has no bool field %s (GoMLX changed)", v.Type(), name)
	}
	return f.Bool(), nil
}
