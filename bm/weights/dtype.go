package weights

import (
	"encoding/binary"
	"fmt"
	"math"
	"unsafe"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/x448/float16"
)

// safetensors dtype names and the GoMLX dtypes they map to.
var stDTypes = map[string]dtypes.DType{
	"BOOL": dtypes.Bool,
	"U8":   dtypes.Uint8, "I8": dtypes.Int8,
	"U16": dtypes.Uint16, "I16": dtypes.Int16,
	"U32": dtypes.Uint32, "I32": dtypes.Int32,
	"U64": dtypes.Uint64, "I64": dtypes.Int64,
	"F16": dtypes.Float16, "BF16": dtypes.BFloat16,
	"F32": dtypes.Float32, "F64": dtypes.Float64,
}

// stName returns the safetensors name of a GoMLX dtype.
func stName(dt dtypes.DType) (string, error) {
	for name, d := range stDTypes {
		if d == dt {
			return name, nil
		}
	}
	return "", fmt.Errorf("dtype %s has no safetensors equivalent", dt)
}

// hostLittleEndian reports whether this machine stores numbers little-endian, as both
// safetensors and PyTorch archives do; tensors' bytes are copied as they are.
var hostLittleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

func checkHostEndian() error {
	if !hostLittleEndian {
		return fmt.Errorf("weights: this machine is big-endian; only little-endian hosts are supported")
	}
	return nil
}

// numBytes returns the byte size of a tensor of the given dtype and dimensions, or an error
// when a dimension is negative or the size overflows.
func numBytes(dt dtypes.DType, dims []int) (int64, error) {
	n := int64(dt.Size())
	for _, d := range dims {
		if d < 0 {
			return 0, fmt.Errorf("negative dimension %d in %v", d, dims)
		}
		if d != 0 && n > math.MaxInt64/int64(d) {
			return 0, fmt.Errorf("shape %v of %s overflows", dims, dt)
		}
		n *= int64(d)
	}
	return n, nil
}

// fromBytes builds a tensor of the given shape whose contents are data (host byte order).
func fromBytes(shape shapes.Shape, data []byte) (*tensors.Tensor, error) {
	t := tensors.FromShape(shape)
	if int64(len(data)) != int64(shape.Memory()) {
		return nil, fmt.Errorf("%d bytes of data for shape %s (%d bytes)", len(data), shape, shape.Memory())
	}
	if len(data) == 0 {
		return t, nil
	}
	err := t.MutableBytes(func(b []byte) { copy(b, data) })
	return t, err
}

// tensorBytes calls fn with the bytes of t (nil for an empty tensor).
func tensorBytes(t *tensors.Tensor, fn func([]byte)) error {
	if t.Size() == 0 {
		fn(nil)
		return nil
	}
	return t.ConstBytes(fn)
}

// bf16FromF32 rounds x to the nearest bfloat16, ties to even; NaN stays NaN.
func bf16FromF32(x float32) uint16 {
	b := math.Float32bits(x)
	if x != x {
		return uint16(b>>16) | 0x40
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// convertRaw converts little-endian raw values of dtype from to dtype to. Supported: the
// identity, and between the float types F16, BF16, F32 and F64.
func convertRaw(data []byte, from, to dtypes.DType) ([]byte, error) {
	if from == to {
		return data, nil
	}
	if !from.IsFloat() || !to.IsFloat() {
		return nil, fmt.Errorf("cannot convert %s to %s", from, to)
	}
	n := len(data) / from.Size()
	get := func(i int) float64 {
		switch from {
		case dtypes.BFloat16:
			return float64(math.Float32frombits(uint32(binary.LittleEndian.Uint16(data[2*i:])) << 16))
		case dtypes.Float16:
			return float64(float16.Frombits(binary.LittleEndian.Uint16(data[2*i:])).Float32())
		case dtypes.Float32:
			return float64(math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:])))
		default:
			return math.Float64frombits(binary.LittleEndian.Uint64(data[8*i:]))
		}
	}
	out := make([]byte, n*to.Size())
	for i := 0; i < n; i++ {
		v := get(i)
		switch to {
		case dtypes.BFloat16:
			binary.LittleEndian.PutUint16(out[2*i:], bf16FromF32(float32(v)))
		case dtypes.Float16:
			binary.LittleEndian.PutUint16(out[2*i:], float16.Fromfloat32(float32(v)).Bits())
		case dtypes.Float32:
			binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(float32(v)))
		default:
			binary.LittleEndian.PutUint64(out[8*i:], math.Float64bits(v))
		}
	}
	return out, nil
}

// transpose2D returns the [cols, rows] transpose of a row-major [rows, cols] matrix of
// elemSize-byte elements.
func transpose2D(src []byte, rows, cols, elemSize int) []byte {
	dst := make([]byte, len(src))
	if len(src) == 0 {
		return dst
	}
	switch elemSize {
	case 2:
		transposeTiled(unsafe.Slice((*uint16)(unsafe.Pointer(&dst[0])), rows*cols),
			unsafe.Slice((*uint16)(unsafe.Pointer(&src[0])), rows*cols), rows, cols)
	case 4:
		transposeTiled(unsafe.Slice((*uint32)(unsafe.Pointer(&dst[0])), rows*cols),
			unsafe.Slice((*uint32)(unsafe.Pointer(&src[0])), rows*cols), rows, cols)
	case 8:
		transposeTiled(unsafe.Slice((*uint64)(unsafe.Pointer(&dst[0])), rows*cols),
			unsafe.Slice((*uint64)(unsafe.Pointer(&src[0])), rows*cols), rows, cols)
	default:
		for r := 0; r < rows; r++ {
			for c := 0; c < cols; c++ {
				s, d := (r*cols+c)*elemSize, (c*rows+r)*elemSize
				copy(dst[d:d+elemSize], src[s:s+elemSize])
			}
		}
	}
	return dst
}

// transposeTiled writes the transpose of the row-major [rows, cols] matrix src into dst,
// in square tiles so that both sides stay in cache.
func transposeTiled[T any](dst, src []T, rows, cols int) {
	const tile = 32
	for r0 := 0; r0 < rows; r0 += tile {
		r1 := min(r0+tile, rows)
		for c0 := 0; c0 < cols; c0 += tile {
			c1 := min(c0+tile, cols)
			for r := r0; r < r1; r++ {
				row := src[r*cols : r*cols+cols]
				for c := c0; c < c1; c++ {
					dst[c*rows+r] = row[c]
				}
			}
		}
	}
}
