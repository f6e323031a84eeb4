package pjrtexec

import (
	"strings"
	"testing"
	"unsafe"

	"blackmamba/xla/pjrtexec/internal/fakepjrt"
)

// TestCallWrappers runs the C wrappers that await events and free buffers against stand-ins of
// the PJRT functions (internal/fakepjrt): each PJRT function receives its argument struct with
// PJRT's struct_size for it (24 bytes for one handle, 40 for an error's message) and the right
// handle; an event is destroyed whether its wait succeeds or fails; a failure's message reaches
// the Go error, and the PJRT error is destroyed.
func TestCallWrappers(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("the struct sizes checked are those of 64-bit platforms")
	}
	var f fns
	f.set(nil, fakepjrt.Await.Pointer(), fakepjrt.EventDestroy.Pointer(), fakepjrt.BufferDestroy.Pointer(),
		fakepjrt.ErrorMessage.Pointer(), fakepjrt.ErrorDestroy.Pointer())
	want := func(fn fakepjrt.Fn, name string, count int, size uintptr, handle unsafe.Pointer) {
		t.Helper()
		c := fakepjrt.Last(fn)
		if c.Count != count || (count > 0 && (c.StructSize != size || c.Handle != handle)) {
			t.Errorf("%s: %d calls, struct_size %d, handle %p; want %d, %d, %p", name, c.Count, c.StructSize, c.Handle, count, size, handle)
		}
	}

	fakepjrt.Reset(false)
	ev := fakepjrt.Handle(1)
	if err := f.await(ev); err != nil {
		t.Fatalf("await: %v", err)
	}
	want(fakepjrt.Await, "await", 1, 24, ev)
	want(fakepjrt.EventDestroy, "event destroy", 1, 24, ev)
	want(fakepjrt.ErrorMessage, "error message", 0, 0, nil)
	buf := fakepjrt.Handle(2)
	if err := f.destroy(buf); err != nil {
		t.Fatalf("destroy: %v", err)
	}
	want(fakepjrt.BufferDestroy, "buffer destroy", 1, 24, buf)

	fakepjrt.Reset(true)
	ev = fakepjrt.Handle(3)
	err := f.await(ev)
	if err == nil || !strings.Contains(err.Error(), "waiting for an execution: fake failure") {
		t.Errorf("failed await: error %v, want one with the plugin's message", err)
	}
	want(fakepjrt.EventDestroy, "event destroy after a failed wait", 1, 24, ev)
	want(fakepjrt.ErrorMessage, "error message", 1, 40, fakepjrt.Error())
	want(fakepjrt.ErrorDestroy, "error destroy", 1, 24, fakepjrt.Error())
	buf = fakepjrt.Handle(4)
	if err := f.destroy(buf); err == nil || !strings.Contains(err.Error(), "freeing a buffer: fake failure") {
		t.Errorf("failed destroy: error %v, want one with the plugin's message", err)
	}
	want(fakepjrt.BufferDestroy, "buffer destroy", 1, 24, buf)
	want(fakepjrt.ErrorDestroy, "error destroy", 2, 24, fakepjrt.Error())
}
