// Package keys builds and takes apart the composite keys the ledger
// backends store records under: parts joined by a NUL byte, and sequence
// numbers as big-endian uint64s so that byte order is sequence order. Both
// backends use it, so the two order records the same way and export them in
// the same order. It holds no state and does no I/O.
package keys

import (
	"bytes"
	"encoding/binary"
	"strings"
)

// Sep separates the parts of every composite key. Repository names, tags
// and event kinds cannot contain it (package storage refuses them).
const Sep = "\x00"

// Key joins parts with Sep.
func Key(parts ...string) []byte {
	return []byte(strings.Join(parts, Sep))
}

// Prefix joins parts with Sep and ends with Sep, so that it matches the keys
// that start with exactly these parts.
func Prefix(parts ...string) []byte {
	return []byte(strings.Join(parts, Sep) + Sep)
}

// Seq joins parts and a big-endian seq; with no parts it is the 8 bytes of
// seq alone.
func Seq(seq uint64, parts ...string) []byte {
	var k []byte
	if len(parts) > 0 {
		k = Prefix(parts...)
	}
	return binary.BigEndian.AppendUint64(k, seq)
}

// SeqOf returns the big-endian seq that ends k.
func SeqOf(k []byte) (uint64, bool) {
	if len(k) < 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(k[len(k)-8:]), true
}

// Split splits k into n parts on Sep; the last part may hold anything.
func Split(k []byte, n int) ([]string, bool) {
	parts := strings.SplitN(string(k), Sep, n)
	return parts, len(parts) == n
}

// PrefixEnd returns the smallest key greater than every key starting with p,
// or nil when there is none (p empty or all 0xff).
func PrefixEnd(p []byte) []byte {
	end := bytes.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}
