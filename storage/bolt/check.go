package bolt

import (
	"bytes"
	"context"
	"fmt"
	"slices"

	digest "github.com/opencontainers/go-digest"
	bbolt "go.etcd.io/bbolt"

	"github.com/taglock/taglock/storage"
)

// maxProblems caps how many problems Check reports.
const maxProblems = 1000

// checkEvery is how many records a long loop handles between looks at its
// context.
const checkEvery = 1000

// Check implements storage.Ledger in one read transaction: bbolt's own
// page checks, that every record decodes and sits under the key it claims,
// that every index entry points at a record that has it, that every
// record's index entries exist, and that the counts the writes keep are
// what the bindings hold.
func (l *Ledger) Check(ctx context.Context) ([]string, error) {
	c := &checker{ctx: ctx, perRepo: map[string]*storage.Counts{}}
	err := l.view(ctx, func(tx *bbolt.Tx) error {
		for err := range tx.Check() {
			c.report("bbolt: %v", err)
		}
		if err := checkLayout(tx); err != nil {
			c.report("%v", err)
			return nil // the record checks below need every bucket
		}
		for _, step := range []func(*bbolt.Tx) error{
			c.bindings, c.bindingRefs, c.events, c.eventIndexes,
			c.reservations, c.reservedTags, c.reservedDigests, c.manifests, c.pulls, c.stats,
		} {
			if err := step(tx); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("check ledger %s: %w", l.path, err)
	}
	if len(c.problems) > 0 {
		return c.problems, fmt.Errorf("check ledger %s: %d problems: %w", l.path, len(c.problems), storage.ErrCorrupt)
	}
	return nil, nil
}

// checker collects problems; its methods each check one bucket.
type checker struct {
	ctx      context.Context
	problems []string
	visited  int
	// walked and perRepo count the bindings c.bindings read, for c.stats.
	walked  storage.Counts
	perRepo map[string]*storage.Counts
}

func (c *checker) report(format string, args ...any) {
	if len(c.problems) < maxProblems {
		c.problems = append(c.problems, fmt.Sprintf(format, args...))
	}
}

// each calls fn for every key of bucket, checking ctx now and then.
func (c *checker) each(tx *bbolt.Tx, bucket []byte, fn func(k, v []byte)) error {
	return tx.Bucket(bucket).ForEach(func(k, v []byte) error {
		if c.visited++; c.visited%checkEvery == 0 {
			if err := c.ctx.Err(); err != nil {
				return err
			}
		}
		fn(k, v)
		return nil
	})
}

func (c *checker) bindings(tx *bbolt.Tx) error {
	refs := tx.Bucket(bucketBindingRefs)
	return c.each(tx, bucketBindings, func(k, v []byte) {
		b, err := decodeBinding(k, v)
		if err != nil {
			c.report("%v", err)
			return
		}
		if !bytes.Equal(k, key(b.Repo, b.Tag)) {
			c.report("binding under key %q is for %s:%s", k, b.Repo, b.Tag)
			return
		}
		rc := c.perRepo[b.Repo]
		if rc == nil {
			rc = &storage.Counts{Repositories: 1}
			c.perRepo[b.Repo] = rc
			c.walked.Repositories++
		}
		rc.Add(b, 1)
		c.walked.Add(b, 1)
		if _, err := storage.NormalizeBindings([]storage.Binding{b}); err != nil {
			c.report("binding %s:%s: %v", b.Repo, b.Tag, err)
		}
		for _, d := range b.RefDigests() {
			if refs.Get(key(b.Repo, string(d), b.Tag)) == nil {
				c.report("binding %s:%s lacks its index entry for %s", b.Repo, b.Tag, d)
			}
		}
	})
}

func (c *checker) bindingRefs(tx *bbolt.Tx) error {
	return c.each(tx, bucketBindingRefs, func(k, _ []byte) {
		parts, ok := splitKey(k, 3)
		if !ok {
			c.report("binding index key %q is malformed", k)
			return
		}
		repo, d, tag := parts[0], digest.Digest(parts[1]), parts[2]
		b, found, err := getBinding(tx, repo, tag)
		switch {
		case err != nil:
			// Reported by c.bindings.
		case !found:
			c.report("index entry %s:%s@%s points at no binding", repo, tag, d)
		case b.Digest != d && !slices.Contains(b.Closure, d):
			c.report("index entry %s:%s@%s points at a binding that does not reference %s", repo, tag, d, d)
		}
	})
}

func (c *checker) events(tx *bbolt.Tx) error {
	b := tx.Bucket(bucketEvents)
	var last uint64
	err := c.each(tx, bucketEvents, func(k, v []byte) {
		e, err := decodeEvent(k, v)
		if err != nil {
			c.report("%v", err)
			return
		}
		if len(k) != 8 || !bytes.Equal(k, seqKey(e.Seq)) {
			c.report("event %d is stored under key %x", e.Seq, k)
			return
		}
		last = e.Seq
		for _, ix := range eventIndexKeys(e) {
			if tx.Bucket(ix.bucket).Get(ix.key) == nil {
				c.report("event %d lacks its %s entry", e.Seq, ix.bucket)
			}
		}
	})
	if last > b.Sequence() {
		c.report("event sequence is %d but event %d exists", b.Sequence(), last)
	}
	return err
}

// eventIndexes checks that every history index entry points at an event
// that has it.
func (c *checker) eventIndexes(tx *bbolt.Tx) error {
	for _, bucket := range [][]byte{bucketEventsByTag, bucketEventsByRepo, bucketEventsByKind} {
		err := c.each(tx, bucket, func(k, _ []byte) {
			seq, ok := seqOf(k)
			if !ok {
				c.report("%s key %q is malformed", bucket, k)
				return
			}
			ek := seqKey(seq)
			v := tx.Bucket(bucketEvents).Get(ek)
			if v == nil {
				c.report("%s entry %q points at missing event %d", bucket, k[:len(k)-8], seq)
				return
			}
			e, err := decodeEvent(ek, v)
			if err != nil {
				return // reported by c.events
			}
			if !slices.ContainsFunc(eventIndexKeys(e), func(ix indexKey) bool {
				return bytes.Equal(ix.bucket, bucket) && bytes.Equal(ix.key, k)
			}) {
				c.report("%s entry %q points at event %d, which is not indexed there", bucket, k[:len(k)-8], seq)
			}
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func (c *checker) reservations(tx *bbolt.Tx) error {
	tags := tx.Bucket(bucketReservedTags)
	return c.each(tx, bucketReservations, func(k, v []byte) {
		r, err := decodeReservation(k, v)
		if err != nil {
			c.report("%v", err)
			return
		}
		if string(k) != r.ID {
			c.report("reservation %s is stored under key %q", r.ID, k)
		}
		for _, tag := range r.HeldTags() {
			if got := tags.Get(key(r.Repo, tag, r.ID)); digest.Digest(got) != r.Digest {
				c.report("reservation %s lacks its tag entry for %s:%s", r.ID, r.Repo, tag)
			}
		}
		if digs := tx.Bucket(bucketReservedDigs); digs != nil {
			for _, d := range r.Holds() {
				if storage.ReservationKind(digs.Get(key(r.Repo, string(d), r.ID))) != kindOf(r) {
					c.report("reservation %s lacks its digest entry for %s@%s", r.ID, r.Repo, d)
				}
			}
		}
	})
}

func (c *checker) reservedDigests(tx *bbolt.Tx) error {
	if tx.Bucket(bucketReservedDigs) == nil {
		return nil // a read-only check of a file from before the index
	}
	return c.each(tx, bucketReservedDigs, func(k, v []byte) {
		parts, ok := splitKey(k, 3)
		if !ok {
			c.report("reserved digest key %q is malformed", k)
			return
		}
		repo, d, id := parts[0], digest.Digest(parts[1]), parts[2]
		rv := tx.Bucket(bucketReservations).Get([]byte(id))
		if rv == nil {
			c.report("reserved digest %s@%s points at missing reservation %s", repo, d, id)
			return
		}
		r, err := decodeReservation([]byte(id), rv)
		if err != nil {
			return // reported by c.reservations
		}
		if r.Repo != repo || !slices.Contains(r.Holds(), d) || storage.ReservationKind(v) != kindOf(r) {
			c.report("reserved digest %s@%s does not match reservation %s", repo, d, id)
		}
	})
}

func (c *checker) reservedTags(tx *bbolt.Tx) error {
	return c.each(tx, bucketReservedTags, func(k, v []byte) {
		parts, ok := splitKey(k, 3)
		if !ok {
			c.report("reserved tag key %q is malformed", k)
			return
		}
		repo, tag, id := parts[0], parts[1], parts[2]
		rv := tx.Bucket(bucketReservations).Get([]byte(id))
		if rv == nil {
			c.report("reserved tag %s:%s points at missing reservation %s", repo, tag, id)
			return
		}
		r, err := decodeReservation([]byte(id), rv)
		if err != nil {
			return // reported by c.reservations
		}
		if r.Repo != repo || !slices.Contains(r.HeldTags(), tag) || string(r.Digest) != string(v) {
			c.report("reserved tag %s:%s does not match reservation %s", repo, tag, id)
		}
	})
}

func (c *checker) manifests(tx *bbolt.Tx) error {
	return c.each(tx, bucketManifests, func(k, v []byte) {
		m, err := decodeManifest(k, v)
		if err != nil {
			c.report("%v", err)
			return
		}
		if !bytes.Equal(k, key(m.Repo, string(m.Digest))) {
			c.report("manifest under key %q is for %s@%s", k, m.Repo, m.Digest)
		}
	})
}

func (c *checker) pulls(tx *bbolt.Tx) error {
	return c.each(tx, bucketPulls, func(k, v []byte) {
		if _, ok := splitKey(k, 2); !ok {
			c.report("pull key %q is malformed", k)
		}
		if _, err := decodePullTime(k, v); err != nil {
			c.report("%v", err)
		}
	})
}
