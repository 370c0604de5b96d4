package storage

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"

	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// Export record types, the "type" field of every line.
const (
	recordBinding     = "binding"
	recordEvent       = "event"
	recordManifest    = "manifest"
	recordPull        = "pull"
	recordReservation = "reservation"
)

// Each export line is a record's own JSON fields plus "type".
type (
	bindingLine struct {
		Type string `json:"type"`
		Binding
	}
	eventLine struct {
		Type string `json:"type"`
		Event
	}
	manifestLine struct {
		Type string `json:"type"`
		Manifest
	}
	pullLine struct {
		Type string `json:"type"`
		Pull
	}
	reservationLine struct {
		Type string `json:"type"`
		Reservation
		// Expect was stored with reservations by earlier versions; it
		// is read and ignored.
		Expect json.RawMessage `json:"expect,omitempty"`
	}
)

// Backup writes a consistent copy of the ledger file to w while the ledger
// stays in use, and returns the number of bytes written. The copy opens with
// Open like the original.
func (l *Ledger) Backup(ctx context.Context, w io.Writer) (int64, error) {
	var n int64
	err := l.view(ctx, func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	if err != nil {
		return n, fmt.Errorf("backup ledger %s: %w", l.path, err)
	}
	return n, nil
}

// Export writes every record of the ledger to w as JSON lines, each with a
// "type" of "binding", "manifest", "pull", "reservation" or "event", from one
// consistent snapshot. Records come in that order, each type in key order
// (events by Seq), so exporting equal ledgers gives equal bytes.
func (l *Ledger) Export(ctx context.Context, w io.Writer) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	sections := []struct {
		bucket []byte
		line   func(k, v []byte) (any, error)
	}{
		{bucketBindings, func(k, v []byte) (any, error) {
			b, err := decodeBinding(k, v)
			return bindingLine{recordBinding, b}, err
		}},
		{bucketManifests, func(k, v []byte) (any, error) {
			m, err := decodeManifest(k, v)
			return manifestLine{recordManifest, m}, err
		}},
		{bucketPulls, func(k, v []byte) (any, error) {
			parts, ok := splitKey(k, 2)
			if !ok {
				return nil, fmt.Errorf("pull key %q: %w", k, ErrCorrupt)
			}
			at, err := decodePullTime(k, v)
			return pullLine{recordPull, Pull{Repo: parts[0], Digest: digest.Digest(parts[1]), At: at}}, err
		}},
		{bucketReservations, func(k, v []byte) (any, error) {
			r, err := decodeReservation(k, v)
			return reservationLine{Type: recordReservation, Reservation: r}, err
		}},
		{bucketEvents, func(k, v []byte) (any, error) {
			e, err := decodeEvent(k, v)
			return eventLine{recordEvent, e}, err
		}},
	}
	err := l.view(ctx, func(tx *bolt.Tx) error {
		n := 0
		for _, s := range sections {
			err := tx.Bucket(s.bucket).ForEach(func(k, v []byte) error {
				if n++; n%importBatch == 0 {
					if err := ctx.Err(); err != nil {
						return err
					}
				}
				line, err := s.line(k, v)
				if err != nil {
					return err
				}
				return enc.Encode(line)
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return fmt.Errorf("export ledger %s: %w", l.path, err)
	}
	return nil
}
