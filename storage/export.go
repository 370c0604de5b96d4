package storage

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
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

// importBatch is how many records Import writes per transaction.
const importBatch = 1000

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

// Import reads records written by Export and stores them, importBatch (1000)
// records per transaction. It is idempotent: bindings, manifests and
// reservations replace the records with their keys, pulls keep the latest
// time, and events keep their Seq (an event already recorded with the same
// Seq must be identical, or Import fails with ErrInvalid). Unknown types or
// fields fail with ErrInvalid naming the record number. On error the batches
// already written stay; importing the whole stream again is safe.
func (l *Ledger) Import(ctx context.Context, r io.Reader) (ImportStats, error) {
	var stats ImportStats
	dec := json.NewDecoder(bufio.NewReader(r))
	var batch []func(*bolt.Tx) error
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := l.update(ctx, func(tx *bolt.Tx) error {
			for _, apply := range batch {
				if err := apply(tx); err != nil {
					return err
				}
			}
			return nil
		})
		batch = batch[:0]
		return err
	}
	for n := 1; ; n++ {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return stats, fmt.Errorf("import record %d: %w: %w", n, ErrInvalid, err)
		}
		apply, err := parseRecord(raw, &stats)
		if err != nil {
			return stats, fmt.Errorf("import record %d: %w", n, err)
		}
		batch = append(batch, apply)
		if len(batch) == importBatch {
			if err := flush(); err != nil {
				return stats, fmt.Errorf("import up to record %d: %w", n, err)
			}
		}
	}
	if err := flush(); err != nil {
		return stats, fmt.Errorf("import: %w", err)
	}
	return stats, nil
}

// parseRecord decodes and validates one export line and returns the write
// that stores it.
func parseRecord(raw []byte, stats *ImportStats) (func(*bolt.Tx) error, error) {
	var head struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	switch head.Type {
	case recordBinding:
		var line bindingLine
		if err := strictDecode(raw, &line); err != nil {
			return nil, err
		}
		bs, err := normalizeBindings([]Binding{line.Binding})
		if err != nil {
			return nil, err
		}
		stats.Bindings++
		return func(tx *bolt.Tx) error { return putBinding(tx, bs[0]) }, nil
	case recordManifest:
		var line manifestLine
		if err := strictDecode(raw, &line); err != nil {
			return nil, err
		}
		if err := checkManifest(line.Manifest); err != nil {
			return nil, err
		}
		stats.Manifests++
		return func(tx *bolt.Tx) error { return putManifest(tx, line.Manifest) }, nil
	case recordPull:
		var line pullLine
		if err := strictDecode(raw, &line); err != nil {
			return nil, err
		}
		if err := checkPull(line.Pull); err != nil {
			return nil, err
		}
		stats.Pulls++
		return func(tx *bolt.Tx) error { return putPull(tx, line.Pull) }, nil
	case recordReservation:
		var line reservationLine
		if err := strictDecode(raw, &line); err != nil {
			return nil, err
		}
		r := line.Reservation
		if r.Kind == "" {
			r.Kind = ReservePush
		}
		if err := checkName("reservation id", r.ID); err != nil {
			return nil, err
		}
		if err := checkReservation(r); err != nil {
			return nil, err
		}
		stats.Reservations++
		return func(tx *bolt.Tx) error {
			if _, _, err := deleteReservation(tx, r.ID); err != nil {
				return err
			}
			return putReservation(tx, r)
		}, nil
	case recordEvent:
		var line eventLine
		if err := strictDecode(raw, &line); err != nil {
			return nil, err
		}
		e := line.Event
		if e.Seq == 0 {
			return nil, fmt.Errorf("event without seq: %w", ErrInvalid)
		}
		if err := checkEvents([]Event{e}); err != nil {
			return nil, err
		}
		stats.Events++
		return func(tx *bolt.Tx) error { return importEvent(tx, e) }, nil
	default:
		return nil, fmt.Errorf("unknown record type %q: %w", head.Type, ErrInvalid)
	}
}

// importEvent stores e under its own Seq, unless an identical event is
// already there, and moves the sequence past it.
func importEvent(tx *bolt.Tx, e Event) error {
	v, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode event %d: %w", e.Seq, err)
	}
	b := tx.Bucket(bucketEvents)
	if old := b.Get(seqKey(e.Seq)); old != nil {
		if !bytes.Equal(old, v) {
			return fmt.Errorf("event %d differs from the recorded one: %w", e.Seq, ErrInvalid)
		}
		return nil
	}
	if e.Seq > b.Sequence() {
		if err := b.SetSequence(e.Seq); err != nil {
			return err
		}
	}
	return putEvent(tx, e)
}

// strictDecode decodes one record, refusing unknown fields.
func strictDecode(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}
