package weights

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/big"
	"unicode/utf8"
)

// This file is a small pickle virtual machine: enough of protocols 2 to 5 to read what
// torch.save writes, with every class and function it may create decided by the caller. It never
// executes anything else, so a hostile file can only produce an error.

// Python values produced by the unpickler: nil (None), bool, int64, *big.Int, float64, string,
// []byte, pyTuple, *pyList, *pyDict, pyGlobal, and whatever the callbacks return.
type (
	pyTuple []any
	pyList  struct{ items []any }
	// pyGlobal is a class or function named by GLOBAL or STACK_GLOBAL.
	pyGlobal struct{ Module, Name string }
)

func (g pyGlobal) String() string { return g.Module + "." + g.Name }

// pyDict is a dict (or OrderedDict) keeping insertion order.
type pyDict struct {
	keys  []any
	m     map[any]any
	state any // set by BUILD (an OrderedDict's attributes, such as a state dict's _metadata)
}

func newPyDict() *pyDict { return &pyDict{m: map[any]any{}} }

func (d *pyDict) get(k any) (any, bool) {
	v, ok := d.m[k]
	return v, ok
}

// set stores d[k] = v; k must be hashable (None, bool, int, float, str, a global).
func (d *pyDict) set(k, v any) error {
	switch k.(type) {
	case nil, bool, int64, float64, string, pyGlobal:
	default:
		return fmt.Errorf("unsupported dict key of type %s", pyTypeName(k))
	}
	if _, ok := d.m[k]; !ok {
		d.keys = append(d.keys, k)
	}
	d.m[k] = v
	return nil
}

// pyTypeName describes a value's type for error messages.
func pyTypeName(v any) string {
	switch v := v.(type) {
	case nil:
		return "None"
	case bool:
		return "bool"
	case int64, *big.Int:
		return "int"
	case float64:
		return "float"
	case string:
		return "str"
	case []byte:
		return "bytes"
	case pyTuple:
		return "tuple"
	case *pyList:
		return "list"
	case *pyDict:
		return "dict"
	case pyGlobal:
		return "global " + v.String()
	case *torchStorage:
		return "storage"
	case *TorchTensor:
		return "tensor"
	default:
		return fmt.Sprintf("%T", v)
	}
}

// pickleHooks decide what globals exist and what calling them produces.
type pickleHooks struct {
	// global resolves GLOBAL module.name; an error refuses it.
	global func(module, name string) (any, error)
	// call applies a callable (REDUCE, or NEWOBJ on a class) to its arguments.
	call func(fn any, args pyTuple) (any, error)
	// build applies BUILD's state to obj.
	build func(obj, state any) error
	// persistentLoad resolves a BINPERSID id.
	persistentLoad func(pid any) (any, error)
}

// opcode names for error messages.
var opNames = map[byte]string{
	0x80: "PROTO", 0x95: "FRAME", '.': "STOP", 'N': "NONE", 0x88: "NEWTRUE", 0x89: "NEWFALSE",
	'J': "BININT", 'K': "BININT1", 'M': "BININT2", 0x8a: "LONG1", 0x8b: "LONG4", 'G': "BINFLOAT",
	'X': "BINUNICODE", 0x8c: "SHORT_BINUNICODE", 0x8d: "BINUNICODE8", 'T': "BINSTRING",
	'U': "SHORT_BINSTRING", 'B': "BINBYTES", 'C': "SHORT_BINBYTES", 0x8e: "BINBYTES8",
	')': "EMPTY_TUPLE", '(': "MARK", 't': "TUPLE", 0x85: "TUPLE1", 0x86: "TUPLE2", 0x87: "TUPLE3",
	']': "EMPTY_LIST", 'a': "APPEND", 'e': "APPENDS", 'l': "LIST", '}': "EMPTY_DICT", 'd': "DICT",
	's': "SETITEM", 'u': "SETITEMS", 'q': "BINPUT", 'r': "LONG_BINPUT", 0x94: "MEMOIZE",
	'h': "BINGET", 'j': "LONG_BINGET", 'c': "GLOBAL", 0x93: "STACK_GLOBAL", 'R': "REDUCE",
	0x81: "NEWOBJ", 'b': "BUILD", 'Q': "BINPERSID", '0': "POP", '2': "DUP", '1': "POP_MARK",
}

// unpickler is the state of one run.
type unpickler struct {
	data  []byte
	pos   int
	stack []any
	marks []int // stack heights at each MARK
	memo  map[uint32]any
	hooks pickleHooks
	op    byte // current opcode
	opPos int  // its offset
}

// unpickle runs the pickle program data and returns the value it builds.
func unpickle(data []byte, hooks pickleHooks) (any, error) {
	u := &unpickler{data: data, memo: map[uint32]any{}, hooks: hooks}
	return u.run()
}

func (u *unpickler) errorf(format string, args ...any) error {
	name := opNames[u.op]
	if name == "" {
		name = "unknown"
	}
	return fmt.Errorf("pickle: opcode 0x%02x (%s) at offset %d: %s", u.op, name, u.opPos, fmt.Sprintf(format, args...))
}

// read returns the next n bytes.
func (u *unpickler) read(n uint64) ([]byte, error) {
	if n > uint64(len(u.data)-u.pos) {
		return nil, u.errorf("needs %d bytes but only %d remain", n, len(u.data)-u.pos)
	}
	b := u.data[u.pos : u.pos+int(n)]
	u.pos += int(n)
	return b, nil
}

func (u *unpickler) readUint(n int) (uint64, error) {
	b, err := u.read(uint64(n))
	if err != nil {
		return 0, err
	}
	var v uint64
	for i := n - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v, nil
}

// readLine returns the bytes up to the next newline (for GLOBAL).
func (u *unpickler) readLine() (string, error) {
	for i := u.pos; i < len(u.data); i++ {
		if u.data[i] == '\n' {
			s := string(u.data[u.pos:i])
			u.pos = i + 1
			return s, nil
		}
	}
	return "", u.errorf("missing newline")
}

func (u *unpickler) base() int {
	if len(u.marks) == 0 {
		return 0
	}
	return u.marks[len(u.marks)-1]
}

func (u *unpickler) push(v any) { u.stack = append(u.stack, v) }

func (u *unpickler) pop() (any, error) {
	if len(u.stack) <= u.base() {
		return nil, u.errorf("stack underflow")
	}
	v := u.stack[len(u.stack)-1]
	u.stack = u.stack[:len(u.stack)-1]
	return v, nil
}

func (u *unpickler) top() (any, error) {
	if len(u.stack) <= u.base() {
		return nil, u.errorf("stack underflow")
	}
	return u.stack[len(u.stack)-1], nil
}

// popMark returns the items pushed since the last MARK and removes them and the mark.
func (u *unpickler) popMark() ([]any, error) {
	if len(u.marks) == 0 {
		return nil, u.errorf("no MARK on the stack")
	}
	m := u.marks[len(u.marks)-1]
	u.marks = u.marks[:len(u.marks)-1]
	items := append([]any(nil), u.stack[m:]...)
	u.stack = u.stack[:m]
	return items, nil
}

func (u *unpickler) popN(n int) ([]any, error) {
	if len(u.stack)-u.base() < n {
		return nil, u.errorf("stack underflow")
	}
	items := append([]any(nil), u.stack[len(u.stack)-n:]...)
	u.stack = u.stack[:len(u.stack)-n]
	return items, nil
}

// decodeLong decodes a little-endian two's-complement integer.
func decodeLong(b []byte) any {
	if len(b) == 0 {
		return int64(0)
	}
	if len(b) <= 8 {
		var v uint64
		for i := len(b) - 1; i >= 0; i-- {
			v = v<<8 | uint64(b[i])
		}
		shift := uint(64 - 8*len(b))
		return int64(v<<shift) >> shift
	}
	be := make([]byte, len(b))
	for i := range b {
		be[len(b)-1-i] = b[i]
	}
	x := new(big.Int).SetBytes(be)
	if b[len(b)-1]&0x80 != 0 {
		x.Sub(x, new(big.Int).Lsh(big.NewInt(1), uint(8*len(b))))
	}
	if x.IsInt64() {
		return x.Int64()
	}
	return x
}

func (u *unpickler) str(b []byte) (string, error) {
	if !utf8.Valid(b) {
		return "", u.errorf("string is not valid UTF-8")
	}
	return string(b), nil
}

func (u *unpickler) run() (any, error) {
	for {
		if u.pos >= len(u.data) {
			return nil, fmt.Errorf("pickle: data ends at offset %d without a STOP opcode", u.pos)
		}
		u.opPos, u.op = u.pos, u.data[u.pos]
		u.pos++
		switch u.op {
		case 0x80: // PROTO
			b, err := u.read(1)
			if err != nil {
				return nil, err
			}
			if b[0] > 5 {
				return nil, u.errorf("unsupported pickle protocol %d", b[0])
			}
		case 0x95: // FRAME: a length hint only
			if _, err := u.read(8); err != nil {
				return nil, err
			}
		case '.': // STOP
			v, err := u.pop()
			if err != nil {
				return nil, err
			}
			return v, nil
		case 'N':
			u.push(nil)
		case 0x88:
			u.push(true)
		case 0x89:
			u.push(false)
		case 'J':
			v, err := u.readUint(4)
			if err != nil {
				return nil, err
			}
			u.push(int64(int32(uint32(v))))
		case 'K':
			v, err := u.readUint(1)
			if err != nil {
				return nil, err
			}
			u.push(int64(v))
		case 'M':
			v, err := u.readUint(2)
			if err != nil {
				return nil, err
			}
			u.push(int64(v))
		case 0x8a, 0x8b: // LONG1, LONG4
			width := 1
			if u.op == 0x8b {
				width = 4
			}
			n, err := u.readUint(width)
			if err != nil {
				return nil, err
			}
			if width == 4 && int32(uint32(n)) < 0 {
				return nil, u.errorf("negative length %d", int32(uint32(n)))
			}
			b, err := u.read(n)
			if err != nil {
				return nil, err
			}
			u.push(decodeLong(b))
		case 'G':
			b, err := u.read(8)
			if err != nil {
				return nil, err
			}
			u.push(math.Float64frombits(binary.BigEndian.Uint64(b)))
		case 'X', 0x8c, 0x8d, 'T', 'U': // unicode and (Python 2) byte strings, read as str
			width := map[byte]int{'X': 4, 0x8c: 1, 0x8d: 8, 'T': 4, 'U': 1}[u.op]
			n, err := u.readUint(width)
			if err != nil {
				return nil, err
			}
			if u.op == 'T' && int32(uint32(n)) < 0 {
				return nil, u.errorf("negative length %d", int32(uint32(n)))
			}
			b, err := u.read(n)
			if err != nil {
				return nil, err
			}
			s, err := u.str(b)
			if err != nil {
				return nil, err
			}
			u.push(s)
		case 'B', 'C', 0x8e: // bytes
			width := map[byte]int{'B': 4, 'C': 1, 0x8e: 8}[u.op]
			n, err := u.readUint(width)
			if err != nil {
				return nil, err
			}
			b, err := u.read(n)
			if err != nil {
				return nil, err
			}
			u.push(append([]byte(nil), b...))
		case ')':
			u.push(pyTuple{})
		case '(':
			u.marks = append(u.marks, len(u.stack))
		case 't':
			items, err := u.popMark()
			if err != nil {
				return nil, err
			}
			u.push(pyTuple(items))
		case 0x85, 0x86, 0x87:
			items, err := u.popN(int(u.op-0x85) + 1)
			if err != nil {
				return nil, err
			}
			u.push(pyTuple(items))
		case ']':
			u.push(&pyList{})
		case 'l':
			items, err := u.popMark()
			if err != nil {
				return nil, err
			}
			u.push(&pyList{items: items})
		case 'a', 'e':
			var items []any
			var err error
			if u.op == 'a' {
				items, err = u.popN(1)
			} else {
				items, err = u.popMark()
			}
			if err != nil {
				return nil, err
			}
			t, err := u.top()
			if err != nil {
				return nil, err
			}
			l, ok := t.(*pyList)
			if !ok {
				return nil, u.errorf("appending to a %s, not a list", pyTypeName(t))
			}
			l.items = append(l.items, items...)
		case '}':
			u.push(newPyDict())
		case 'd', 's', 'u':
			var items []any
			var err error
			switch u.op {
			case 's':
				items, err = u.popN(2)
			default:
				items, err = u.popMark()
			}
			if err != nil {
				return nil, err
			}
			if len(items)%2 != 0 {
				return nil, u.errorf("odd number of items (%d) for a dict", len(items))
			}
			var d *pyDict
			if u.op == 'd' {
				d = newPyDict()
			} else {
				t, err := u.top()
				if err != nil {
					return nil, err
				}
				var ok bool
				if d, ok = t.(*pyDict); !ok {
					return nil, u.errorf("setting an item of a %s, not a dict", pyTypeName(t))
				}
			}
			for i := 0; i < len(items); i += 2 {
				if err := d.set(items[i], items[i+1]); err != nil {
					return nil, u.errorf("%v", err)
				}
			}
			if u.op == 'd' {
				u.push(d)
			}
		case 'q', 'r', 0x94: // BINPUT, LONG_BINPUT, MEMOIZE
			var idx uint64
			var err error
			switch u.op {
			case 'q':
				idx, err = u.readUint(1)
			case 'r':
				idx, err = u.readUint(4)
			default:
				idx = uint64(len(u.memo))
			}
			if err != nil {
				return nil, err
			}
			if idx > math.MaxUint32 {
				return nil, u.errorf("memo index %d too large", idx)
			}
			t, err := u.top()
			if err != nil {
				return nil, err
			}
			u.memo[uint32(idx)] = t
		case 'h', 'j': // BINGET, LONG_BINGET
			width := 1
			if u.op == 'j' {
				width = 4
			}
			idx, err := u.readUint(width)
			if err != nil {
				return nil, err
			}
			v, ok := u.memo[uint32(idx)]
			if !ok {
				return nil, u.errorf("memo index %d was never stored", idx)
			}
			u.push(v)
		case 'c', 0x93: // GLOBAL, STACK_GLOBAL
			var module, name string
			if u.op == 'c' {
				var err error
				if module, err = u.readLine(); err != nil {
					return nil, err
				}
				if name, err = u.readLine(); err != nil {
					return nil, err
				}
			} else {
				items, err := u.popN(2)
				if err != nil {
					return nil, err
				}
				m, ok1 := items[0].(string)
				n, ok2 := items[1].(string)
				if !ok1 || !ok2 {
					return nil, u.errorf("module and name must be strings, got %s and %s", pyTypeName(items[0]), pyTypeName(items[1]))
				}
				module, name = m, n
			}
			if u.hooks.global == nil {
				return nil, u.errorf("global %s.%s is not allowed", module, name)
			}
			v, err := u.hooks.global(module, name)
			if err != nil {
				return nil, u.errorf("%v", err)
			}
			u.push(v)
		case 'R', 0x81: // REDUCE, NEWOBJ
			items, err := u.popN(2)
			if err != nil {
				return nil, err
			}
			args, ok := items[1].(pyTuple)
			if !ok {
				return nil, u.errorf("arguments must be a tuple, got %s", pyTypeName(items[1]))
			}
			if u.hooks.call == nil {
				return nil, u.errorf("calling %s is not allowed", pyTypeName(items[0]))
			}
			v, err := u.hooks.call(items[0], args)
			if err != nil {
				return nil, u.errorf("%v", err)
			}
			u.push(v)
		case 'b': // BUILD
			state, err := u.pop()
			if err != nil {
				return nil, err
			}
			obj, err := u.top()
			if err != nil {
				return nil, err
			}
			if u.hooks.build == nil {
				return nil, u.errorf("setting the state of a %s is not allowed", pyTypeName(obj))
			}
			if err := u.hooks.build(obj, state); err != nil {
				return nil, u.errorf("%v", err)
			}
		case 'Q': // BINPERSID
			pid, err := u.pop()
			if err != nil {
				return nil, err
			}
			if u.hooks.persistentLoad == nil {
				return nil, u.errorf("persistent ids are not allowed")
			}
			v, err := u.hooks.persistentLoad(pid)
			if err != nil {
				return nil, u.errorf("%v", err)
			}
			u.push(v)
		case '0':
			if _, err := u.pop(); err != nil {
				return nil, err
			}
		case '2':
			t, err := u.top()
			if err != nil {
				return nil, err
			}
			u.push(t)
		case '1':
			if _, err := u.popMark(); err != nil {
				return nil, err
			}
		default:
			return nil, u.errorf("unsupported opcode")
		}
	}
}
