package pjrtexec

/*
#include <stddef.h>
#include <stdint.h>
#include <string.h>

// The few PJRT C API argument structs used here, laid out as the C API (minor version 83)
// defines them. Every PJRT function takes a pointer to its argument struct and returns a
// PJRT_Error pointer (NULL on success); struct_size tells the plugin which fields the caller
// knows about.

typedef struct {
	size_t struct_size;
	void* extension_start;
	const void* error;
	const char* message;
	size_t message_size;
} bmErrorMessageArgs;

typedef struct {
	size_t struct_size;
	void* extension_start;
	void** send_callbacks;
	void** recv_callbacks;
	size_t num_send_ops;
	size_t num_recv_ops;
	int launch_id;
	const int64_t* non_donatable_input_indices;
	size_t num_non_donatable_input_indices;
	void* context;
	const char* call_location;
	size_t num_tasks;
	int* task_ids;
	int64_t* incarnation_ids;
} bmExecuteOptions;

typedef struct {
	size_t struct_size;
	void* extension_start;
	void* executable;
	bmExecuteOptions* options;
	void* const* const* argument_lists;
	size_t num_devices;
	size_t num_args;
	void** const* output_lists;
	void** device_complete_events;
	void* execute_device;
} bmExecuteArgs;

// The arguments of the PJRT functions that take one handle: PJRT_Event_Await_Args,
// PJRT_Event_Destroy_Args, PJRT_Buffer_Destroy_Args and PJRT_Error_Destroy_Args all have this
// layout.
typedef struct {
	size_t struct_size;
	void* extension_start;
	void* handle;
} bmHandleArgs;

typedef void* (*bmFn)(void* args);

// bm_on calls fn, a PJRT function that takes one handle, on handle and returns its result.
static void* bm_on(bmFn fn, void* handle) {
	bmHandleArgs a;
	memset(&a, 0, sizeof a);
	a.struct_size = sizeof a;
	a.handle = handle;
	return fn(&a);
}

// The PJRT functions used, taken from the plugin's function table.
typedef struct {
	bmFn execute, event_await, event_destroy, buffer_destroy, error_message, error_destroy;
} bmFns;

// bm_failed returns 0 when err is NULL; otherwise it copies err's message into buf (at most n-1
// bytes, NUL-terminated), destroys err and returns 1.
static int bm_failed(const bmFns* f, void* err, char* buf, size_t n) {
	if (err == NULL) {
		return 0;
	}
	bmErrorMessageArgs m;
	memset(&m, 0, sizeof m);
	m.struct_size = sizeof m;
	m.error = err;
	f->error_message(&m);
	size_t k = m.message_size < n - 1 ? m.message_size : n - 1;
	if (m.message != NULL) {
		memcpy(buf, m.message, k);
	} else {
		k = 0;
	}
	buf[k] = 0;
	bm_on(f->error_destroy, err);
	return 1;
}

// bm_execute enqueues one execution of exec on one device and returns without waiting for it:
// args[nargs] are the input buffers, keep[nkeep] the indices of those not donated, outs receives
// the output buffers and *event the execution's completion event. Returns 0, or 1 with the
// error's message in msg.
static int bm_execute(const bmFns* f, void* exec, void* device, void** args, size_t nargs,
		const int64_t* keep, size_t nkeep, void** outs, void** event, char* msg, size_t msgn) {
	bmExecuteOptions opt;
	memset(&opt, 0, sizeof opt);
	opt.struct_size = sizeof opt;
	opt.non_donatable_input_indices = keep;
	opt.num_non_donatable_input_indices = nkeep;
	void* const* argl = args;
	void** outl = outs;
	bmExecuteArgs a;
	memset(&a, 0, sizeof a);
	a.struct_size = sizeof a;
	a.executable = exec;
	a.options = &opt;
	a.argument_lists = &argl;
	a.num_devices = 1;
	a.num_args = nargs;
	a.output_lists = &outl;
	a.device_complete_events = event;
	a.execute_device = device;
	void* err = f->execute(&a);
	return bm_failed(f, err, msg, msgn);
}

// bm_await waits for event and destroys it. Returns 0, or 1 with the error's message in msg.
static int bm_await(const bmFns* f, void* event, char* msg, size_t msgn) {
	void* err = bm_on(f->event_await, event);
	bm_on(f->event_destroy, event);
	return bm_failed(f, err, msg, msgn);
}

// bm_buffer_destroy frees a buffer handle. Returns 0, or 1 with the error's message in msg.
static int bm_buffer_destroy(const bmFns* f, void* buffer, char* msg, size_t msgn) {
	return bm_failed(f, bm_on(f->buffer_destroy, buffer), msg, msgn);
}
*/
import "C"

import (
	"errors"
	"unsafe"
)

// fns is the table of PJRT functions a Pipeline calls.
type fns struct{ c C.bmFns }

// msgLen bounds the PJRT error messages kept.
const msgLen = 1024

// callError turns a failed call's message buffer into an error.
func callError(what string, msg []C.char) error {
	return errors.New("pjrtexec: " + what + ": " + C.GoString(&msg[0]))
}

// execute enqueues one execution (see bm_execute). args and outs hold C pointers only.
func (f *fns) execute(exec, device unsafe.Pointer, args []unsafe.Pointer, keep []int64, outs []unsafe.Pointer) (unsafe.Pointer, error) {
	var event unsafe.Pointer
	msg := make([]C.char, msgLen)
	var keepPtr *C.int64_t
	if len(keep) > 0 {
		keepPtr = (*C.int64_t)(unsafe.Pointer(&keep[0]))
	}
	var argsPtr, outsPtr *unsafe.Pointer
	if len(args) > 0 {
		argsPtr = &args[0]
	}
	if len(outs) > 0 {
		outsPtr = &outs[0]
	}
	if C.bm_execute(&f.c, exec, device, argsPtr, C.size_t(len(args)), keepPtr, C.size_t(len(keep)),
		outsPtr, &event, &msg[0], msgLen) != 0 {
		return nil, callError("execute", msg)
	}
	return event, nil
}

// await waits for event and frees it.
func (f *fns) await(event unsafe.Pointer) error {
	msg := make([]C.char, msgLen)
	if C.bm_await(&f.c, event, &msg[0], msgLen) != 0 {
		return callError("waiting for an execution", msg)
	}
	return nil
}

// destroy frees a buffer handle.
func (f *fns) destroy(buffer unsafe.Pointer) error {
	msg := make([]C.char, msgLen)
	if C.bm_buffer_destroy(&f.c, buffer, &msg[0], msgLen) != 0 {
		return callError("freeing a buffer", msg)
	}
	return nil
}

// setFns fills the table from the plugin's function pointers.
func (f *fns) set(execute, await, eventDestroy, bufferDestroy, errorMessage, errorDestroy unsafe.Pointer) {
	f.c.execute = C.bmFn(execute)
	f.c.event_await = C.bmFn(await)
	f.c.event_destroy = C.bmFn(eventDestroy)
	f.c.buffer_destroy = C.bmFn(bufferDestroy)
	f.c.error_message = C.bmFn(errorMessage)
	f.c.error_destroy = C.bmFn(errorDestroy)
}
