package bolt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"

	"github.com/taglock/taglock/storage"
)

// The parts of bbolt's file format checkFile reads: each of the first two
// pages holds a 16-byte page header and then a meta record (magic, version,
// page size, flags, root bucket, freelist page, high-water page id, txid,
// and an FNV-64a checksum of what precedes it), in native byte order.
const (
	boltMagic         = 0xED0CDAED
	boltVersion       = 2
	boltPageHeader    = 16
	boltMetaChecksum  = 56 // offset of the checksum within the meta record
	boltMetaSize      = boltMetaChecksum + 8
	boltMaxPageSizeLg = 14 // bbolt looks for the second meta up to 1 KiB << 14
)

// boltMeta is what checkFile needs of a meta record.
type boltMeta struct {
	pageSize  uint64
	highWater uint64 // the first page id past the end of the data
	txid      uint64
}

// checkFile refuses, before bbolt maps it, a ledger file that bbolt would
// either start afresh or crash on: an existing empty file (bbolt would
// initialise it as a new, empty ledger, silently forgetting every binding),
// and a file shorter than its newest commit says it is (bbolt would read
// pages past the end: a panic or a fatal fault, never an error). A missing
// file is fine: Open creates it. Other damage is left to bbolt's own checks.
func checkFile(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	// Meta first, size second: bbolt grows the file before it writes the
	// meta that counts the new pages, so a writer in another process
	// cannot make a sound file look short.
	m, ok := newestMeta(f)
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	if size == 0 {
		return fmt.Errorf("the file is empty; a new ledger is created only where no file exists: %w", storage.ErrCorrupt)
	}
	if !ok {
		return nil // bbolt reports it as invalid
	}
	if need := m.highWater * m.pageSize; uint64(size) < need {
		return fmt.Errorf("the file has %d bytes but its last commit (txid %d) needs %d; it was truncated: %w", size, m.txid, need, storage.ErrCorrupt)
	}
	return nil
}

// newestMeta returns the valid meta record with the highest txid, as bbolt
// chooses it.
func newestMeta(r io.ReaderAt) (boltMeta, bool) {
	first, ok0 := readMeta(r, 0)
	var second boltMeta
	ok1 := false
	if ok0 {
		second, ok1 = readMeta(r, int64(first.pageSize))
	} else {
		for i := range boltMaxPageSizeLg + 1 {
			if second, ok1 = readMeta(r, 1024<<i); ok1 {
				break
			}
		}
	}
	switch {
	case ok0 && ok1 && second.txid > first.txid, !ok0 && ok1:
		return second, true
	case ok0:
		return first, true
	}
	return boltMeta{}, false
}

// readMeta reads and validates the meta record of the page at off.
func readMeta(r io.ReaderAt, off int64) (boltMeta, bool) {
	var b [boltPageHeader + boltMetaSize]byte
	if _, err := r.ReadAt(b[:], off); err != nil {
		return boltMeta{}, false
	}
	meta := b[boltPageHeader:]
	ne := binary.NativeEndian
	h := fnv.New64a()
	_, _ = h.Write(meta[:boltMetaChecksum])
	if ne.Uint32(meta[0:]) != boltMagic || ne.Uint32(meta[4:]) != boltVersion || ne.Uint64(meta[boltMetaChecksum:]) != h.Sum64() {
		return boltMeta{}, false
	}
	m := boltMeta{pageSize: uint64(ne.Uint32(meta[8:])), highWater: ne.Uint64(meta[40:]), txid: ne.Uint64(meta[48:])}
	if m.pageSize < 1024 || off != 0 && uint64(off) != m.pageSize {
		return boltMeta{}, false
	}
	return m, true
}
