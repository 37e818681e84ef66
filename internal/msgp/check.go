package msgp

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// maxDepth bounds the nesting of a stored value. Deeper input is refused
// before it reaches the decoder, whose recursion it would otherwise drive.
const maxDepth = 256

var errTruncated = errors.New("truncated msgpack")

// check walks one msgpack value in b from off and returns the offset after
// it. It refuses input whose declared lengths exceed what is left: the
// decoder allocates a slice of the declared length up front, so 5 bytes that
// claim four billion elements would exhaust memory. After check, every
// allocation is bounded by len(b).
func check(b []byte, off, depth int) (int, error) {
	if depth > maxDepth {
		return 0, fmt.Errorf("msgpack nested deeper than %d", maxDepth)
	}
	if off >= len(b) {
		return 0, errTruncated
	}
	c := b[off]
	off++
	var n, size int // n nested items follow; or size raw bytes follow
	switch {
	case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		return off, nil
	case c&0xf0 == 0x80:
		n = 2 * int(c&0x0f)
	case c&0xf0 == 0x90:
		n = int(c & 0x0f)
	case c&0xe0 == 0xa0:
		size = int(c & 0x1f)
	default:
		var err error
		if n, size, off, err = header(b, c, off); err != nil {
			return 0, err
		}
	}
	if size > len(b)-off || n > len(b)-off {
		return 0, fmt.Errorf("msgpack length %d exceeds the %d bytes left", max(n, size), len(b)-off)
	}
	off += size
	for i := 0; i < n; i++ {
		var err error
		if off, err = check(b, off, depth+1); err != nil {
			return 0, err
		}
	}
	return off, nil
}

// header decodes the length of a non-fix type code c whose argument starts
// at off.
func header(b []byte, c byte, off int) (n, size, next int, err error) {
	arg := func(w int) (int, bool) {
		if len(b)-off < w {
			return 0, false
		}
		var v uint64
		switch w {
		case 1:
			v = uint64(b[off])
		case 2:
			v = uint64(binary.BigEndian.Uint16(b[off:]))
		case 4:
			v = uint64(binary.BigEndian.Uint32(b[off:]))
		}
		off += w
		if v > uint64(len(b)) {
			v = uint64(len(b)) + 1 // too long either way; avoid overflow
		}
		return int(v), true
	}
	var ok bool
	switch c {
	case 0xcc, 0xd0:
		size, ok = 1, true
	case 0xcd, 0xd1:
		size, ok = 2, true
	case 0xca, 0xce, 0xd2:
		size, ok = 4, true
	case 0xcb, 0xcf, 0xd3:
		size, ok = 8, true
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext: type byte + 1, 2, 4, 8, 16
		size, ok = 1+1<<(c-0xd4), true
	case 0xc4, 0xd9:
		size, ok = arg(1)
	case 0xc5, 0xda:
		size, ok = arg(2)
	case 0xc6, 0xdb:
		size, ok = arg(4)
	case 0xc7, 0xc8, 0xc9: // ext: length, type byte, data
		size, ok = arg(1 << (c - 0xc7))
		size++
	case 0xdc:
		n, ok = arg(2)
	case 0xdd:
		n, ok = arg(4)
	case 0xde:
		n, ok = arg(2)
		n *= 2
	case 0xdf:
		n, ok = arg(4)
		n *= 2
	default:
		return 0, 0, 0, fmt.Errorf("invalid msgpack type code 0x%02x", c)
	}
	if !ok {
		return 0, 0, 0, errTruncated
	}
	return n, size, off, nil
}
