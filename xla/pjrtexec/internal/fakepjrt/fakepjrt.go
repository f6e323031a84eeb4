// Package fakepjrt is a stand-in for the few PJRT C functions that package pjrtexec calls
// without a device: awaiting and destroying an event, destroying a buffer, and reading and
// destroying an error. Each records the argument struct it receives (its struct_size and
// handle), the way a plugin reads it, so that tests can check pjrtexec's C wrappers on a
// machine without a GPU. It is not a PJRT plugin: execution is not faked.
package fakepjrt

/*
#include <stddef.h>

// The argument structs as PJRT (C API minor version 83) lays them out, written here apart from
// pjrtexec's own copies on purpose: the stand-ins read them as a plugin would, so a wrong field
// order or size on pjrtexec's side shows in the tests instead of being shared by both sides.
typedef struct {
	size_t struct_size;
	void* extension_start;
	void* handle;
} fkHandleArgs;

typedef struct {
	size_t struct_size;
	void* extension_start;
	const void* error;
	const char* message;
	size_t message_size;
} fkMessageArgs;

enum { FK_AWAIT, FK_EVENT_DESTROY, FK_BUFFER_DESTROY, FK_ERROR_MESSAGE, FK_ERROR_DESTROY, FK_N };

static int fk_calls[FK_N];
static size_t fk_sizes[FK_N];
static const void* fk_handles[FK_N];
static char fk_objects[16]; // the fake handles: addresses in this array
static void* fk_fail;       // returned by await and buffer_destroy when not NULL

static void fk_record(int i, size_t size, const void* handle) {
	fk_calls[i]++;
	fk_sizes[i] = size;
	fk_handles[i] = handle;
}

// fk_on_handle records a call of stand-in i that takes one handle and returns ret.
static void* fk_on_handle(int i, void* args, void* ret) {
	fkHandleArgs* a = args;
	fk_record(i, a->struct_size, a->handle);
	return ret;
}

static void* fk_await(void* args) { return fk_on_handle(FK_AWAIT, args, fk_fail); }
static void* fk_event_destroy(void* args) { return fk_on_handle(FK_EVENT_DESTROY, args, NULL); }
static void* fk_buffer_destroy(void* args) { return fk_on_handle(FK_BUFFER_DESTROY, args, fk_fail); }

static void* fk_error_message(void* args) {
	fkMessageArgs* m = args;
	fk_record(FK_ERROR_MESSAGE, m->struct_size, m->error);
	m->message = "fake failure";
	m->message_size = 12;
	return NULL;
}

static void* fk_error_destroy(void* args) { return fk_on_handle(FK_ERROR_DESTROY, args, NULL); }

static void* fk_fn(int i) {
	switch (i) {
	case FK_AWAIT: return (void*)fk_await;
	case FK_EVENT_DESTROY: return (void*)fk_event_destroy;
	case FK_BUFFER_DESTROY: return (void*)fk_buffer_destroy;
	case FK_ERROR_MESSAGE: return (void*)fk_error_message;
	case FK_ERROR_DESTROY: return (void*)fk_error_destroy;
	}
	return NULL;
}

static void fk_reset(int fail) {
	for (int i = 0; i < FK_N; i++) {
		fk_calls[i] = 0;
		fk_sizes[i] = 0;
		fk_handles[i] = NULL;
	}
	fk_fail = fail ? (void*)&fk_objects[0] : NULL;
}

static void* fk_object(int i) { return &fk_objects[i]; }
static int fk_count(int i) { return fk_calls[i]; }
static size_t fk_size(int i) { return fk_sizes[i]; }
static const void* fk_handle(int i) { return fk_handles[i]; }
*/
import "C"

import "unsafe"

// Fn names one faked PJRT function.
type Fn int

// The faked functions.
const (
	Await Fn = iota
	EventDestroy
	BufferDestroy
	ErrorMessage
	ErrorDestroy
)

// Pointer returns fn's C function pointer, to put in a PJRT function table.
func (fn Fn) Pointer() unsafe.Pointer { return C.fk_fn(C.int(fn)) }

// Reset forgets every recorded call. With fail, Await and BufferDestroy return the error
// handle Error() (whose message is "fake failure"); otherwise they succeed.
func Reset(fail bool) {
	f := 0
	if fail {
		f = 1
	}
	C.fk_reset(C.int(f))
}

// Error is the handle of the error the failing functions return.
func Error() unsafe.Pointer { return C.fk_object(0) }

// Handle returns a fake event or buffer handle, i in 1 … 15 (C memory, so C may keep it).
func Handle(i int) unsafe.Pointer { return C.fk_object(C.int(i)) }

// Call is what one faked function saw in its last call.
type Call struct {
	Count      int            // calls since Reset
	StructSize uintptr        // its argument struct's struct_size
	Handle     unsafe.Pointer // the handle in it (the error, for ErrorMessage)
}

// Last returns what fn saw.
func Last(fn Fn) Call {
	return Call{
		Count:      int(C.fk_count(C.int(fn))),
		StructSize: uintptr(C.fk_size(C.int(fn))),
		Handle:     unsafe.Pointer(C.fk_handle(C.int(fn))),
	}
}
