package bolt

import (
	"bytes"

	bbolt "go.etcd.io/bbolt"

	"github.com/taglock/taglock/storage/internal/keys"
)

// Short names for the key helpers every file here uses.
var (
	key       = keys.Key
	prefix    = keys.Prefix
	seqKey    = keys.Seq
	seqOf     = keys.SeqOf
	splitKey  = keys.Split
	prefixEnd = keys.PrefixEnd
)

// forPrefix calls fn for every key of b that starts with p, in key order,
// until fn returns false or an error.
func forPrefix(b *bbolt.Bucket, p []byte, fn func(k, v []byte) (bool, error)) error {
	c := b.Cursor()
	for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		more, err := fn(k, v)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

// forPrefixBelow calls fn for every key of b that starts with p and sorts
// below end, in reverse key order, until fn returns false or an error; a
// nil end means every key with prefix p.
func forPrefixBelow(b *bbolt.Bucket, p, end []byte, fn func(k, v []byte) (bool, error)) error {
	c := b.Cursor()
	var k, v []byte
	if end == nil {
		end = prefixEnd(p)
	}
	if end == nil {
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
