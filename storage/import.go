package storage

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// importBatch is how many records Import writes per transaction.
const importBatch = 1000

// ImportOptions configures Import.
type ImportOptions struct {
	// Force applies records that contradict what the ledger holds (see
	// Contradiction) and reports each in ImportStats.Replaced. Default
	// false: one contradiction refuses the whole import.
	Force bool
}

// Import reads records written by Export and stores them.
//
// Import never changes a binding silently. A binding record that differs in
// any field from what the ledger (or an earlier record of the same import)
// holds for its repo:tag, and a reservation that would hold an immutable tag
// for another digest than its binding's, is a Contradiction. Without
// o.Force, Import then fails with a *ContradictionError listing every one,
// and writes nothing. Records identical to what the ledger holds, and
// records of tags it does not hold, are not contradictions, so importing
// the same stream again is safe.
//
// Otherwise bindings, manifests and reservations replace the records with
// their keys, pulls keep the latest time, and events keep their Seq (an
// event already recorded with the same Seq must be identical, or Import
// fails with ErrInvalid). Unknown types or fields fail with ErrInvalid
// naming the record number. Import reads and checks the whole stream, in
// memory, before it writes anything; any invalid record means nothing is
// written. It then writes importBatch (1000) records per transaction,
// checking each record again inside its transaction: if a push changed a
// binding meanwhile so that a record now contradicts it, Import stops with
// a *ContradictionError, the batches before it stay written, and importing
// the stream again with Force settles it.
func (l *Ledger) Import(ctx context.Context, r io.Reader, o ImportOptions) (ImportStats, error) {
	records, err := readImport(r)
	if err != nil {
		return ImportStats{}, err
	}
	var found []Contradiction
	err = l.view(ctx, func(tx *bolt.Tx) error {
		v := &importView{tx: tx, pending: map[string]Binding{}, events: map[uint64][]byte{}}
		for i, rec := range records {
			if i%importBatch == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			c, err := rec.check(v)
			if err != nil {
				return fmt.Errorf("import record %d: %w", rec.n, err)
			}
			if c != nil {
				c.Record = rec.n
				found = append(found, *c)
			}
		}
		return nil
	})
	if err != nil {
		return ImportStats{}, fmt.Errorf("import: %w", err)
	}
	if len(found) > 0 && !o.Force {
		return ImportStats{}, &ContradictionError{Contradictions: found}
	}
	var stats ImportStats
	for start := 0; start < len(records); start += importBatch {
		batch := records[start:min(start+importBatch, len(records))]
		var replaced []Contradiction
		err := l.update(ctx, func(tx *bolt.Tx) error {
			replaced = replaced[:0]
			v := &importView{tx: tx}
			for _, rec := range batch {
				c, err := rec.check(v)
				if err != nil {
					return fmt.Errorf("import record %d: %w", rec.n, err)
				}
				if c != nil {
					c.Record = rec.n
					if !o.Force {
						return &ContradictionError{Contradictions: []Contradiction{*c}}
					}
					replaced = append(replaced, *c)
				}
				if err := rec.apply(tx); err != nil {
					return fmt.Errorf("import record %d: %w", rec.n, err)
				}
			}
			return nil
		})
		if err != nil {
			return stats, fmt.Errorf("import records %d to %d (those before were written): %w", batch[0].n, batch[len(batch)-1].n, err)
		}
		for _, rec := range batch {
			rec.count(&stats)
		}
		stats.Replaced = append(stats.Replaced, replaced...)
	}
	return stats, nil
}

// importRecord is one parsed and validated export line.
type importRecord struct {
	n int // the record's number in the stream, from 1
	// check reports how the record contradicts v (without Record), or
	// nil, and notes the record in v; an error means the record cannot
	// be imported at all.
	check func(v *importView) (*Contradiction, error)
	// apply stores the record.
	apply func(tx *bolt.Tx) error
	// count adds the record to the stats.
	count func(*ImportStats)
}

// importView is what an import's records are checked against: the ledger
// as of tx and, while checking the whole stream before writing, the
// records checked so far (which the write transactions hold by then).
type importView struct {
	tx      *bolt.Tx
	pending map[string]Binding // by key(repo, tag); nil when writing
	events  map[uint64][]byte  // JSON by Seq; nil when writing
}

// binding is what repo:tag is bound to, as far as v knows.
func (v *importView) binding(repo, tag string) (Binding, bool, error) {
	if b, ok := v.pending[string(key(repo, tag))]; ok {
		return b, true, nil
	}
	return getBinding(v.tx, repo, tag)
}

// readImport parses and validates every record of r.
func readImport(r io.Reader) ([]importRecord, error) {
	dec := json.NewDecoder(bufio.NewReader(r))
	var records []importRecord
	for n := 1; ; n++ {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			return records, nil
		}
		if err != nil {
			return nil, fmt.Errorf("import record %d: %w: %w", n, ErrInvalid, err)
		}
		rec, err := parseRecord(raw)
		if err != nil {
			return nil, fmt.Errorf("import record %d: %w", n, err)
		}
		rec.n = n
		records = append(records, rec)
	}
}

// parseRecord decodes and validates one export line.
func parseRecord(raw []byte) (importRecord, error) {
	var head struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return importRecord{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	none := func(*importView) (*Contradiction, error) { return nil, nil }
	switch head.Type {
	case recordBinding:
		var line bindingLine
		if err := strictDecode(raw, &line); err != nil {
			return importRecord{}, err
		}
		bs, err := normalizeBindings([]Binding{line.Binding})
		if err != nil {
			return importRecord{}, err
		}
		b := bs[0]
		rec := importRecord{
			apply: func(tx *bolt.Tx) error { return putBinding(tx, b) },
			count: func(s *ImportStats) { s.Bindings++ },
		}
		rec.check = func(v *importView) (*Contradiction, error) {
			old, ok, err := v.binding(b.Repo, b.Tag)
			if err != nil {
				return nil, err
			}
			if v.pending != nil {
				v.pending[string(key(b.Repo, b.Tag))] = b
			}
			if !ok {
				return nil, nil
			}
			if changes := bindingChanges(old, b); len(changes) > 0 {
				return &Contradiction{Repo: b.Repo, Tag: b.Tag, Changes: changes}, nil
			}
			return nil, nil
		}
		return rec, nil
	case recordManifest:
		var line manifestLine
		if err := strictDecode(raw, &line); err != nil {
			return importRecord{}, err
		}
		if err := checkManifest(line.Manifest); err != nil {
			return importRecord{}, err
		}
		return importRecord{check: none,
			apply: func(tx *bolt.Tx) error { return putManifest(tx, line.Manifest) },
			count: func(s *ImportStats) { s.Manifests++ },
		}, nil
	case recordPull:
		var line pullLine
		if err := strictDecode(raw, &line); err != nil {
			return importRecord{}, err
		}
		if err := checkPull(line.Pull); err != nil {
			return importRecord{}, err
		}
		return importRecord{check: none,
			apply: func(tx *bolt.Tx) error { return putPull(tx, line.Pull) },
			count: func(s *ImportStats) { s.Pulls++ },
		}, nil
	case recordReservation:
		var line reservationLine
		if err := strictDecode(raw, &line); err != nil {
			return importRecord{}, err
		}
		r := line.Reservation
		if r.Kind == "" {
			r.Kind = ReservePush
		}
		if err := checkName("reservation id", r.ID); err != nil {
			return importRecord{}, err
		}
		if err := checkReservation(r); err != nil {
			return importRecord{}, err
		}
		rec := importRecord{
			apply: func(tx *bolt.Tx) error {
				if _, _, err := deleteReservation(tx, r.ID); err != nil {
					return err
				}
				return putReservation(tx, r)
			},
			count: func(s *ImportStats) { s.Reservations++ },
		}
		// A pending reservation is settled when taglock learns what the
		// upstream did: a push is committed when the upstream holds its
		// digest, a delete by tag tombstones the tag with the delete's
		// mode. So a new one holding an immutable tag for another digest,
		// or deleting it with a weaker mode, would change the binding
		// later.
		rec.check = func(v *importView) (*Contradiction, error) {
			if same, err := sameReservation(v.tx, r); err != nil || same {
				return nil, err
			}
			for _, tag := range r.Tags {
				b, ok, err := v.binding(r.Repo, tag)
				if err != nil {
					return nil, err
				}
				if !ok || b.Mode != ModeImmutable {
					continue
				}
				recorded := "immutable, bound to " + string(b.Digest)
				switch {
				case b.Digest != r.Digest:
					return &Contradiction{Repo: r.Repo, Tag: tag, Changes: []Change{{
						Field: "reservation", Recorded: recorded, Incoming: fmt.Sprintf("%s reserved for %s", r.Kind, r.Digest),
					}}}, nil
				case r.IsDelete() && r.Mode != "" && r.Mode != ModeImmutable:
					return &Contradiction{Repo: r.Repo, Tag: tag, Changes: []Change{{
						Field: "reservation", Recorded: recorded, Incoming: "delete leaving a " + r.Mode + " tombstone",
					}}}, nil
				}
			}
			return nil, nil
		}
		return rec, nil
	case recordEvent:
		var line eventLine
		if err := strictDecode(raw, &line); err != nil {
			return importRecord{}, err
		}
		e := line.Event
		if e.Seq == 0 {
			return importRecord{}, fmt.Errorf("event without seq: %w", ErrInvalid)
		}
		if err := checkEvents([]Event{e}); err != nil {
			return importRecord{}, err
		}
		return importRecord{
			check: func(v *importView) (*Contradiction, error) {
				if v.events == nil {
					return nil, nil // importEvent checks it when writing
				}
				j, err := json.Marshal(e)
				if err != nil {
					return nil, fmt.Errorf("encode event %d: %w", e.Seq, err)
				}
				if old, ok := v.events[e.Seq]; ok && !bytes.Equal(old, j) {
					return nil, fmt.Errorf("event %d appears twice, differently: %w", e.Seq, ErrInvalid)
				}
				v.events[e.Seq] = j
				return nil, checkEventSeq(v.tx, e)
			},
			apply: func(tx *bolt.Tx) error { return importEvent(tx, e) },
			count: func(s *ImportStats) { s.Events++ },
		}, nil
	default:
		return importRecord{}, fmt.Errorf("unknown record type %q: %w", head.Type, ErrInvalid)
	}
}

// bindingChanges lists the fields in which b differs from old; none when
// importing b would leave old as it is.
func bindingChanges(old, b Binding) []Change {
	var out []Change
	diff := func(field, recorded, incoming string) {
		if recorded != incoming {
			out = append(out, Change{Field: field, Recorded: recorded, Incoming: incoming})
		}
	}
	at := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339Nano)
	}
	digests := func(ds []digest.Digest) string {
		s := make([]string, len(ds))
		for i, d := range ds {
			s[i] = string(d)
		}
		return strings.Join(s, " ")
	}
	manifest := func(m []byte) string {
		if len(m) == 0 {
			return ""
		}
		return fmt.Sprintf("%d bytes, %s", len(m), digest.FromBytes(m))
	}
	diff("digest", string(old.Digest), string(b.Digest))
	diff("mode", old.Mode, b.Mode)
	diff("deleted", strconv.FormatBool(old.Deleted), strconv.FormatBool(b.Deleted))
	diff("deletedAt", at(old.DeletedAt), at(b.DeletedAt))
	diff("pushedAt", at(old.PushedAt), at(b.PushedAt))
	diff("pushedBy", old.PushedBy, b.PushedBy)
	diff("rule", old.Rule, b.Rule)
	diff("mediaType", old.MediaType, b.MediaType)
	diff("size", strconv.FormatInt(old.Size, 10), strconv.FormatInt(b.Size, 10))
	diff("closure", digests(old.Closure), digests(b.Closure))
	if !bytes.Equal(old.Manifest, b.Manifest) {
		out = append(out, Change{Field: "manifest", Recorded: manifest(old.Manifest), Incoming: manifest(b.Manifest)})
	}
	return out
}

// sameReservation reports whether tx holds r, as it is, under r.ID.
func sameReservation(tx *bolt.Tx, r Reservation) (bool, error) {
	old := tx.Bucket(bucketReservations).Get([]byte(r.ID))
	if old == nil {
		return false, nil
	}
	v, err := json.Marshal(r)
	if err != nil {
		return false, fmt.Errorf("encode reservation %s: %w", r.ID, err)
	}
	return bytes.Equal(old, v), nil
}

// checkEventSeq fails with ErrInvalid when another event than e is
// recorded under e.Seq.
func checkEventSeq(tx *bolt.Tx, e Event) error {
	v, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode event %d: %w", e.Seq, err)
	}
	if old := tx.Bucket(bucketEvents).Get(seqKey(e.Seq)); old != nil && !bytes.Equal(old, v) {
		return fmt.Errorf("event %d differs from the recorded one: %w", e.Seq, ErrInvalid)
	}
	return nil
}

// importEvent stores e under its own Seq, unless an identical event is
// already there, and moves the sequence past it.
func importEvent(tx *bolt.Tx, e Event) error {
	if err := checkEventSeq(tx, e); err != nil {
		return err
	}
	b := tx.Bucket(bucketEvents)
	if b.Get(seqKey(e.Seq)) != nil {
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
