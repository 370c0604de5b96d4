package storage

import (
	"bytes"
	_ "crypto/sha256" // digest.Validate needs the algorithms registered
	_ "crypto/sha512"
	"encoding/binary"
	"fmt"
	"strings"

	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// sep separates the parts of every composite key.
const sep = "\x00"

// key joins parts with sep.
func key(parts ...string) []byte {
	return []byte(strings.Join(parts, sep))
}

// prefix joins parts with sep and ends with sep, so that it matches the keys
// that start with exactly these parts.
func prefix(parts ...string) []byte {
	return []byte(strings.Join(parts, sep) + sep)
}

// seqKey joins parts and a big-endian seq.
func seqKey(seq uint64, parts ...string) []byte {
	k := prefix(parts...)
	if len(parts) == 0 {
		k = nil
	}
	return binary.BigEndian.AppendUint64(k, seq)
}

// seqOf returns the big-endian seq that ends k.
func seqOf(k []byte) (uint64, bool) {
	if len(k) < 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(k[len(k)-8:]), true
}

// splitKey splits k into n parts on sep; the last part may hold anything.
func splitKey(k []byte, n int) ([]string, bool) {
	parts := strings.SplitN(string(k), sep, n)
	return parts, len(parts) == n
}

// forPrefix calls fn for every key of b that starts with p, in key order,
// until fn returns false or an error.
func forPrefix(b *bolt.Bucket, p []byte, fn func(k, v []byte) (bool, error)) error {
	c := b.Cursor()
	for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		more, err := fn(k, v)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

// forPrefixReverse is forPrefix in reverse key order.
func forPrefixReverse(b *bolt.Bucket, p []byte, fn func(k, v []byte) (bool, error)) error {
	c := b.Cursor()
	var k, v []byte
	if end := prefixEnd(p); end == nil {
		k, v = c.Last()
	} else if k, v = c.Seek(end); k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	for ; k != nil && bytes.HasPrefix(k, p); k, v = c.Prev() {
		more, err := fn(k, v)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

// prefixEnd returns the smallest key greater than every key starting with p,
// or nil when there is none (p empty or all 0xff).
func prefixEnd(p []byte) []byte {
	end := bytes.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

// checkName validates a repository, tag or kind used in a key.
func checkName(what, s string) error {
	if s == "" {
		return fmt.Errorf("empty %s: %w", what, ErrInvalid)
	}
	if strings.Contains(s, sep) {
		return fmt.Errorf("%s %q contains NUL: %w", what, s, ErrInvalid)
	}
	return nil
}

// checkDigest validates a digest used in a key.
func checkDigest(what string, d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("%s %q: %w: %w", what, d, ErrInvalid, err)
	}
	return nil
}
