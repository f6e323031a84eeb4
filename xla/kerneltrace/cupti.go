//go:build linux && cgo

package kerneltrace

/*
#cgo LDFLAGS: -ldl -lpthread
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// The few CUPTI entry points used, resolved with dlsym so that nothing links against CUPTI.
// Every one returns a CUptiResult, 0 on success.
typedef void (*bmRequestFn)(uint8_t **buffer, size_t *size, size_t *maxRecords);
typedef void (*bmCompleteFn)(void *context, uint32_t streamId, uint8_t *buffer, size_t size, size_t validSize);
static int (*bmActivityEnable)(int kind);
static int (*bmActivityDisable)(int kind);
static int (*bmRegisterCallbacks)(bmRequestFn, bmCompleteFn);
static int (*bmGetNextRecord)(uint8_t *buffer, size_t valid, void **record);
static int (*bmFlushAll)(uint32_t flag);
static int (*bmGetTimestamp)(uint64_t *ts);
static int (*bmGetResultString)(int result, const char **str);
static int (*bmGetVersion)(uint32_t *version);

// Kernel records kept from CUPTI's buffers: CUpti_ActivityKernel records (CUDA 9 and later
// share this prefix) hold start and end at byte offsets 16 and 24, the grid at 52, the block at
// 64, the correlation id at 92 and the name's pointer at 104.
enum { bmKindKernel = 3, bmKindConcurrentKernel = 10 };
typedef struct {
	uint64_t start, end;
	int32_t grid[3], block[3];
	uint32_t corr, name;
} bmKernel;

static pthread_mutex_t bmMu = PTHREAD_MUTEX_INITIALIZER;
static bmKernel *bmRecs;
static size_t bmLen, bmCap;
static uint64_t bmLost; // records dropped for want of host memory

// Kernel names, interned by CUPTI's name pointer (shared by every record of one kernel).
#define BM_NAME_SLOTS 16384
static const char *bmNamePtr[BM_NAME_SLOTS];
static uint32_t bmNameID[BM_NAME_SLOTS];
static char **bmNames;
static uint32_t bmNamesLen, bmNamesCap;

static uint32_t bmIntern(const char *p) {
	if (p == NULL) return 0;
	size_t h = ((uintptr_t)p >> 3) % BM_NAME_SLOTS;
	for (size_t i = 0; i < BM_NAME_SLOTS; i++, h = (h + 1) % BM_NAME_SLOTS) {
		if (bmNamePtr[h] == p) return bmNameID[h];
		if (bmNamePtr[h] == NULL) {
			if (bmNamesLen == bmNamesCap) {
				uint32_t c = bmNamesCap ? 2 * bmNamesCap : 256;
				char **n = realloc(bmNames, c * sizeof(char *));
				if (n == NULL) return 0;
				bmNames = n, bmNamesCap = c;
			}
			char *s = strdup(p);
			if (s == NULL) return 0;
			bmNames[bmNamesLen++] = s;
			bmNamePtr[h] = p, bmNameID[h] = bmNamesLen; // ids start at 1; 0 is "no name"
			return bmNamesLen;
		}
	}
	return 0;
}

#define BM_BUFFER (8u << 20)

static void bmRequest(uint8_t **buffer, size_t *size, size_t *maxRecords) {
	void *p = NULL;
	if (posix_memalign(&p, 8, BM_BUFFER) != 0) p = NULL;
	*buffer = p;
	*size = p ? BM_BUFFER : 0;
	*maxRecords = 0;
}

static void bmComplete(void *context, uint32_t streamId, uint8_t *buffer, size_t size, size_t valid) {
	void *rec = NULL;
	pthread_mutex_lock(&bmMu);
	while (valid > 0 && bmGetNextRecord(buffer, valid, &rec) == 0) {
		const uint8_t *r = rec;
		uint32_t kind;
		memcpy(&kind, r, 4);
		if (kind != bmKindKernel && kind != bmKindConcurrentKernel) continue;
		if (bmLen == bmCap) {
			size_t c = bmCap ? 2 * bmCap : 65536;
			bmKernel *n = realloc(bmRecs, c * sizeof(bmKernel));
			if (n == NULL) { bmLost++; continue; }
			bmRecs = n, bmCap = c;
		}
		bmKernel *k = &bmRecs[bmLen++];
		const char *name;
		memcpy(&k->start, r + 16, 8);
		memcpy(&k->end, r + 24, 8);
		memcpy(k->grid, r + 52, 12);
		memcpy(k->block, r + 64, 12);
		memcpy(&k->corr, r + 92, 4);
		memcpy(&name, r + 104, sizeof name);
		k->name = bmIntern(name);
	}
	pthread_mutex_unlock(&bmMu);
	free(buffer);
}

// bmLoad opens the library at path and resolves the entry points; it returns NULL or the
// name of what failed (dlerror's text).
static const char *bmLoad(const char *path) {
	void *h = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
	if (h == NULL) return dlerror();
#define BM_SYM(v, s) if ((*(void **)&v = dlsym(h, s)) == NULL) return s;
	BM_SYM(bmActivityEnable, "cuptiActivityEnable")
	BM_SYM(bmActivityDisable, "cuptiActivityDisable")
	BM_SYM(bmRegisterCallbacks, "cuptiActivityRegisterCallbacks")
	BM_SYM(bmGetNextRecord, "cuptiActivityGetNextRecord")
	BM_SYM(bmFlushAll, "cuptiActivityFlushAll")
	BM_SYM(bmGetTimestamp, "cuptiGetTimestamp")
	BM_SYM(bmGetResultString, "cuptiGetResultString")
	BM_SYM(bmGetVersion, "cuptiGetVersion")
#undef BM_SYM
	return NULL;
}

static int bmStart(uint32_t *version) {
	int r = bmGetVersion(version);
	if (r != 0) return r;
	r = bmRegisterCallbacks(bmRequest, bmComplete);
	if (r != 0) return r;
	return bmActivityEnable(bmKindConcurrentKernel);
}
static int bmStop(void) {
	int r = bmActivityDisable(bmKindConcurrentKernel);
	int f = bmFlushAll(1);
	return r != 0 ? r : f;
}
static int bmFlush(void) { return bmFlushAll(1); }
static int bmNow(uint64_t *ts) { return bmGetTimestamp(ts); }
static const char *bmResult(int r) {
	const char *s = NULL;
	if (bmGetResultString == NULL || bmGetResultString(r, &s) != 0 || s == NULL) return "unknown CUPTI result";
	return s;
}

// bmTake moves the kept records into out (room for n) and returns how many it moved; the rest
// stay for the next call.
static size_t bmTake(bmKernel *out, size_t n) {
	pthread_mutex_lock(&bmMu);
	size_t m = n < bmLen ? n : bmLen;
	memcpy(out, bmRecs, m * sizeof(bmKernel));
	memmove(bmRecs, bmRecs + m, (bmLen - m) * sizeof(bmKernel));
	bmLen -= m;
	pthread_mutex_unlock(&bmMu);
	return m;
}
static size_t bmPending(void) {
	pthread_mutex_lock(&bmMu);
	size_t n = bmLen;
	pthread_mutex_unlock(&bmMu);
	return n;
}
static uint64_t bmLostCount(void) {
	pthread_mutex_lock(&bmMu);
	uint64_t n = bmLost;
	pthread_mutex_unlock(&bmMu);
	return n;
}
static const char *bmName(uint32_t id) {
	const char *s = NULL;
	pthread_mutex_lock(&bmMu);
	if (id >= 1 && id <= bmNamesLen) s = bmNames[id - 1];
	pthread_mutex_unlock(&bmMu);
	return s;
}
*/
import "C"

import (
	"fmt"
	"sync"
	"unsafe"
)

// tracer is the process's CUPTI session: CUPTI's activity callbacks are global, so there is
// at most one.
var tracer struct {
	sync.Mutex
	loaded  string // the library loaded, "" before the first Start
	running bool
	version uint32
}

func start(lib string) (*Tracer, error) {
	tracer.Lock()
	defer tracer.Unlock()
	if tracer.running {
		return nil, fmt.Errorf("kerneltrace: a trace is already running in this process")
	}
	if tracer.loaded == "" {
		cs := C.CString(lib)
		defer C.free(unsafe.Pointer(cs))
		if msg := C.bmLoad(cs); msg != nil {
			return nil, fmt.Errorf("kerneltrace: loading CUPTI from %s: %s", lib, C.GoString(msg))
		}
		tracer.loaded = lib
	} else if tracer.loaded != lib {
		return nil, fmt.Errorf("kerneltrace: CUPTI was already loaded from %s, cannot switch to %s", tracer.loaded, lib)
	}
	var v C.uint32_t
	if r := C.bmStart(&v); r != 0 {
		return nil, fmt.Errorf("kerneltrace: starting CUPTI's kernel activity records (%s): %s", lib, C.GoString(C.bmResult(r)))
	}
	tracer.running, tracer.version = true, uint32(v)
	return &Tracer{Library: lib, Version: uint32(v)}, nil
}

func (t *Tracer) now() (uint64, error) {
	var ts C.uint64_t
	if r := C.bmNow(&ts); r != 0 {
		return 0, fmt.Errorf("kerneltrace: cuptiGetTimestamp: %s", C.GoString(C.bmResult(r)))
	}
	return uint64(ts), nil
}

func (t *Tracer) collect() ([]Kernel, uint64, error) {
	if r := C.bmFlush(); r != 0 {
		return nil, 0, fmt.Errorf("kerneltrace: flushing CUPTI's buffers: %s", C.GoString(C.bmResult(r)))
	}
	n := int(C.bmPending())
	if n == 0 {
		return nil, uint64(C.bmLostCount()), nil
	}
	raw := make([]C.bmKernel, n)
	m := int(C.bmTake(&raw[0], C.size_t(n)))
	names := map[uint32]string{}
	out := make([]Kernel, m)
	for i, r := range raw[:m] {
		id := uint32(r.name)
		name, ok := names[id]
		if !ok {
			if s := C.bmName(r.name); s != nil {
				name = C.GoString(s)
			}
			names[id] = name
		}
		out[i] = Kernel{
			Name: name, StartNs: uint64(r.start), EndNs: uint64(r.end),
			Grid:        [3]int32{int32(r.grid[0]), int32(r.grid[1]), int32(r.grid[2])},
			Block:       [3]int32{int32(r.block[0]), int32(r.block[1]), int32(r.block[2])},
			Correlation: uint32(r.corr),
		}
	}
	return out, uint64(C.bmLostCount()), nil
}

func (t *Tracer) stop() error {
	tracer.Lock()
	defer tracer.Unlock()
	if !tracer.running {
		return nil
	}
	tracer.running = false
	if r := C.bmStop(); r != 0 {
		return fmt.Errorf("kerneltrace: stopping CUPTI's kernel records: %s", C.GoString(C.bmResult(r)))
	}
	return nil
}
