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

	"github.com/taglock/taglock/policy"

	digest "github.com/opencontainers/go-digest"
)

// ImportOptions configures Import.
type ImportOptions struct {
	// Force applies records that contradict what the ledger holds (see
	// Contradiction) and reports each in ImportStats.Replaced. Default
	// false: one contradiction refuses the whole import.
	Force bool
}

// ImportRecord is one parsed and validated record of an export stream:
// exactly one of its pointers is set.
type ImportRecord struct {
	// N is the record's number in the stream, from 1; in an export every
	// record is one line.
	N           int
	Binding     *Binding
	Manifest    *Manifest
	Pull        *Pull
	Reservation *Reservation
	Event       *Event
}

// ImportView is what checking import records reads of a ledger.
type ImportView interface {
	// Binding returns the binding of repo:tag; ok is false when there is
	// none.
	Binding(ctx context.Context, repo, tag string) (b Binding, ok bool, err error)
	// Reservation returns the pending reservation id; ok is false when
	// there is none.
	Reservation(ctx context.Context, id string) (r Reservation, ok bool, err error)
	// Event returns the event recorded under seq; ok is false when there
	// is none.
	Event(ctx context.Context, seq uint64) (e Event, ok bool, err error)
	// Manifest returns the record of manifest d of repo; ok is false when
	// there is none.
	Manifest(ctx context.Context, repo string, d digest.Digest) (m Manifest, ok bool, err error)
}

// ImportTarget is what ImportInto needs from a backend.
type ImportTarget interface {
	// ViewImport calls fn with a view of one consistent state of the
	// ledger, which answers at least what checking records asks: the
	// bindings of their repo:tags (a reservation's tags included), their
	// reservations by ID and their events by Seq.
	ViewImport(ctx context.Context, records []ImportRecord, fn func(ImportView) error) error
	// WriteImport stores records, all or none, the way Import documents:
	// bindings, manifests and reservations replace the records with their
	// keys (a replaced reservation's index entries go with it), pulls keep
	// the latest time, and events are stored under their own Seq, unless
	// an identical event is there, with the event sequence moved past
	// them. Before writing it calls check with a view of the ledger as the
	// write finds it, and writes nothing when check fails; it may call
	// check more than once.
	WriteImport(ctx context.Context, records []ImportRecord, check func(ImportView) error) error
}

// ImportInto implements Ledger.Import on a backend's ImportTarget, writing
// batch records per WriteImport.
func ImportInto(ctx context.Context, r io.Reader, o ImportOptions, t ImportTarget, batch int) (ImportStats, error) {
	records, err := ReadImport(r)
	if err != nil {
		return ImportStats{}, err
	}
	var found []Contradiction
	err = t.ViewImport(ctx, records, func(v ImportView) error {
		found = nil
		ov := newOverlay(v)
		for i, rec := range records {
			if i%checkEvery == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			c, err := ov.check(ctx, rec, true)
			if err != nil {
				return fmt.Errorf("import record %d: %w", rec.N, err)
			}
			if c != nil {
				c.Record = rec.N
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
	for start := 0; start < len(records); start += batch {
		recs := records[start:min(start+batch, len(records))]
		var replaced []Contradiction
		err := t.WriteImport(ctx, recs, func(v ImportView) error {
			replaced = replaced[:0]
			ov := newOverlay(v)
			for _, rec := range recs {
				c, err := ov.check(ctx, rec, false)
				if err != nil {
					return fmt.Errorf("import record %d: %w", rec.N, err)
				}
				if c != nil {
					c.Record = rec.N
					if !o.Force {
						return &ContradictionError{Contradictions: []Contradiction{*c}}
					}
					replaced = append(replaced, *c)
				}
			}
			return nil
		})
		if err != nil {
			return stats, fmt.Errorf("import records %d to %d (those before were written): %w", recs[0].N, recs[len(recs)-1].N, err)
		}
		for _, rec := range recs {
			rec.count(&stats)
		}
		stats.Replaced = append(stats.Replaced, replaced...)
	}
	return stats, nil
}

// checkEvery is how many records a long loop handles between looks at its
// context.
const checkEvery = 1000

func (rec ImportRecord) count(s *ImportStats) {
	switch {
	case rec.Binding != nil:
		s.Bindings++
	case rec.Manifest != nil:
		s.Manifests++
	case rec.Pull != nil:
		s.Pulls++
	case rec.Reservation != nil:
		s.Reservations++
	case rec.Event != nil:
		s.Events++
	}
}

// overlay is an ImportView with the records checked so far on top, which a
// write holds by the time it reaches the next record.
type overlay struct {
	v            ImportView
	bindings     map[string]Binding
	reservations map[string]Reservation
	events       map[uint64]Event
	manifests    map[string]Manifest
}

func newOverlay(v ImportView) *overlay {
	return &overlay{v: v, bindings: map[string]Binding{}, reservations: map[string]Reservation{}, events: map[uint64]Event{},
		manifests: map[string]Manifest{}}
}

func (o *overlay) binding(ctx context.Context, repo, tag string) (Binding, bool, error) {
	if b, ok := o.bindings[repo+nul+tag]; ok {
		return b, true, nil
	}
	return o.v.Binding(ctx, repo, tag)
}

// check reports how rec contradicts the ledger (without Record), or nil,
// and notes rec in o; an error means rec cannot be imported at all.
// whole is true while checking the whole stream before writing, when an
// event appearing twice is the stream's fault rather than the ledger's.
func (o *overlay) check(ctx context.Context, rec ImportRecord, whole bool) (*Contradiction, error) {
	switch {
	case rec.Binding != nil:
		b := *rec.Binding
		old, ok, err := o.binding(ctx, b.Repo, b.Tag)
		if err != nil {
			return nil, err
		}
		o.bindings[b.Repo+nul+b.Tag] = b
		if !ok {
			return nil, nil
		}
		if changes := bindingChanges(old, b); len(changes) > 0 {
			return &Contradiction{Repo: b.Repo, Tag: b.Tag, Changes: changes}, nil
		}
		return nil, nil
	case rec.Reservation != nil:
		r := *rec.Reservation
		c, err := o.reservationContradiction(ctx, r)
		o.reservations[r.ID] = r
		return c, err
	case rec.Manifest != nil:
		// What a manifest references decides what deletes and pushes
		// protect; a record that says otherwise than the recorded one
		// must not replace it silently.
		m := *rec.Manifest
		k := m.Repo + nul + string(m.Digest)
		old, ok := o.manifests[k]
		if !ok {
			var err error
			if old, ok, err = o.v.Manifest(ctx, m.Repo, m.Digest); err != nil {
				return nil, err
			}
		}
		o.manifests[k] = m
		if !ok {
			return nil, nil
		}
		if j, err := json.Marshal(m); err != nil {
			return nil, fmt.Errorf("encode manifest %s@%s: %w", m.Repo, m.Digest, err)
		} else if !sameJSON(old, j) {
			oj, _ := json.Marshal(old)
			return &Contradiction{Repo: m.Repo, Manifest: m.Digest, Changes: []Change{{
				Field: "manifest record", Recorded: string(oj), Incoming: string(j)}}}, nil
		}
	case rec.Event != nil:
		e := *rec.Event
		j, err := json.Marshal(e)
		if err != nil {
			return nil, fmt.Errorf("encode event %d: %w", e.Seq, err)
		}
		if old, ok := o.events[e.Seq]; ok {
			if !sameJSON(old, j) {
				if whole {
					return nil, fmt.Errorf("event %d appears twice, differently: %w", e.Seq, ErrInvalid)
				}
				return nil, fmt.Errorf("event %d differs from the recorded one: %w", e.Seq, ErrInvalid)
			}
		} else if old, ok, err := o.v.Event(ctx, e.Seq); err != nil {
			return nil, err
		} else if ok && !sameJSON(old, j) {
			return nil, fmt.Errorf("event %d differs from the recorded one: %w", e.Seq, ErrInvalid)
		}
		o.events[e.Seq] = e
	}
	return nil, nil
}

// sameJSON reports whether v encodes to j.
func sameJSON(v any, j []byte) bool {
	b, err := json.Marshal(v)
	return err == nil && bytes.Equal(b, j)
}

// reservationContradiction reports how importing r would change a binding
// later. A pending reservation is settled when taglock learns what the
// upstream did: a push is committed when the upstream holds its digest, a
// delete by tag tombstones the tag with the delete's mode. So a new one
// holding an immutable tag for another digest, or deleting it with a weaker
// mode, would change the binding later.
func (o *overlay) reservationContradiction(ctx context.Context, r Reservation) (*Contradiction, error) {
	old, ok := o.reservations[r.ID]
	if !ok {
		var err error
		if old, ok, err = o.v.Reservation(ctx, r.ID); err != nil {
			return nil, err
		}
	}
	if ok {
		j, err := json.Marshal(r)
		if err != nil {
			return nil, fmt.Errorf("encode reservation %s: %w", r.ID, err)
		}
		if sameJSON(old, j) {
			return nil, nil
		}
	}
	for _, tag := range r.Tags {
		b, ok, err := o.binding(ctx, r.Repo, tag)
		if err != nil {
			return nil, err
		}
		if !ok || b.Mode != policy.Immutable {
			continue
		}
		recorded := "immutable, bound to " + string(b.Digest)
		switch {
		case b.Digest != r.Digest:
			return &Contradiction{Repo: r.Repo, Tag: tag, Changes: []Change{{
				Field: "reservation", Recorded: recorded, Incoming: fmt.Sprintf("%s reserved for %s", r.Kind, r.Digest),
			}}}, nil
		case r.IsDelete() && r.Mode != nil && *r.Mode != policy.Immutable:
			return &Contradiction{Repo: r.Repo, Tag: tag, Changes: []Change{{
				Field: "reservation", Recorded: recorded, Incoming: "delete leaving a " + r.Mode.String() + " tombstone",
			}}}, nil
		}
	}
	return nil, nil
}

// ReadImport parses and validates every record of r, written by Export. It
// fails with an error wrapping ErrInvalid naming the record number on
// malformed JSON, an unknown type or field, or a record that cannot be
// stored.
func ReadImport(r io.Reader) ([]ImportRecord, error) {
	dec := json.NewDecoder(bufio.NewReader(r))
	var records []ImportRecord
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
		rec.N = n
		records = append(records, rec)
	}
}

// parseRecord decodes and validates one export line.
func parseRecord(raw []byte) (ImportRecord, error) {
	var head struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return ImportRecord{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	switch head.Type {
	case recordBinding:
		var line bindingLine
		if err := strictDecode(raw, &line); err != nil {
			return ImportRecord{}, err
		}
		bs, err := NormalizeBindings([]Binding{line.Binding})
		if err != nil {
			return ImportRecord{}, err
		}
		return ImportRecord{Binding: &bs[0]}, nil
	case recordManifest:
		var line manifestLine
		if err := strictDecode(raw, &line); err != nil {
			return ImportRecord{}, err
		}
		if err := line.Manifest.Validate(); err != nil {
			return ImportRecord{}, err
		}
		return ImportRecord{Manifest: &line.Manifest}, nil
	case recordPull:
		var line pullLine
		if err := strictDecode(raw, &line); err != nil {
			return ImportRecord{}, err
		}
		if err := line.Pull.Validate(); err != nil {
			return ImportRecord{}, err
		}
		return ImportRecord{Pull: &line.Pull}, nil
	case recordReservation:
		var line reservationLine
		if err := strictDecode(raw, &line); err != nil {
			return ImportRecord{}, err
		}
		r := line.Reservation
		if r.Kind == "" {
			r.Kind = ReservePush
		}
		if err := checkName("reservation id", r.ID); err != nil {
			return ImportRecord{}, err
		}
		if err := checkReservation(r); err != nil {
			return ImportRecord{}, err
		}
		if !r.Deadline.IsZero() && r.Deadline.After(r.CreatedAt.Add(MaxRequestWindow)) {
			return ImportRecord{}, fmt.Errorf("reservation %s: its deadline %s is more than %s after it was made (%s); no request to the upstream takes that long: %w",
				r.ID, r.Deadline.UTC().Format(time.RFC3339), MaxRequestWindow, r.CreatedAt.UTC().Format(time.RFC3339), ErrInvalid)
		}
		return ImportRecord{Reservation: &r}, nil
	case recordEvent:
		var line eventLine
		if err := strictDecode(raw, &line); err != nil {
			return ImportRecord{}, err
		}
		e := line.Event
		if e.Seq == 0 {
			return ImportRecord{}, fmt.Errorf("event without seq: %w", ErrInvalid)
		}
		if err := ValidateEvents([]Event{e}); err != nil {
			return ImportRecord{}, err
		}
		return ImportRecord{Event: &e}, nil
	default:
		return ImportRecord{}, fmt.Errorf("unknown record type %q: %w", head.Type, ErrInvalid)
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
	diff("mode", old.Mode.String(), b.Mode.String())
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

// strictDecode decodes one record, refusing unknown fields.
func strictDecode(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}
