package etcd

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	digest "github.com/opencontainers/go-digest"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/internal/keys"
)

// maxProblems caps how many problems Check reports.
const maxProblems = 1000

// Check implements storage.Ledger on one revision: the schema version and
// the event sequence, that every record decodes and sits under the key it
// claims, that every binding has its repository key, the index entries of
// its generation and, for a large manifest, chunks that add up to it, that
// every event has its index entries and every index entry its event, and
// that reservations and their holder entries agree. Index entries and
// chunks of other generations than a binding's are not problems: they are
// written ahead of a write that may still be running, or left by one that
// failed, and reads ignore them.
func (l *Ledger) Check(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rev, err := l.revision(ctx)
	if err != nil {
		return nil, fmt.Errorf("check etcd ledger %s: %w", l.k, err)
	}
	c := &checker{l: l, ctx: ctx, rev: rev, keys: map[string]bool{}}
	if _, err := l.scan(ctx, string(l.k), end(string(l.k)), rev, true, func(kv *mvccpb.KeyValue) error {
		c.keys[string(kv.Key)] = true
		return nil
	}); err != nil {
		return nil, fmt.Errorf("check etcd ledger %s: %w", l.k, err)
	}
	for _, step := range []func() error{c.meta, c.bindings, c.repos, c.refs, c.events, c.eventIndexes, c.reservations, c.holders, c.manifests, c.pulls} {
		if err := step(); err != nil {
			return nil, fmt.Errorf("check etcd ledger %s: %w", l.k, err)
		}
	}
	if len(c.problems) > 0 {
		return c.problems, fmt.Errorf("check etcd ledger %s: %d problems: %w", l.k, len(c.problems), storage.ErrCorrupt)
	}
	return nil, nil
}

// checker collects problems; its methods each check one section.
type checker struct {
	l        *Ledger
	ctx      context.Context
	rev      int64
	keys     map[string]bool // every key of the ledger, at rev
	problems []string
	maxSeq   uint64
	byKey    map[string]bindingRecord // bindings by repo\x00tag
}

func (c *checker) report(format string, args ...any) {
	if len(c.problems) < maxProblems {
		c.problems = append(c.problems, fmt.Sprintf(format, args...))
	}
}

// each calls fn for every key-value of section.
func (c *checker) each(section string, fn func(rest []byte, kv *mvccpb.KeyValue)) error {
	p := c.l.k.prefix(section)
	_, err := c.l.scan(c.ctx, p, end(p), c.rev, false, func(kv *mvccpb.KeyValue) error {
		fn(kv.Key[len(p):], kv)
		return nil
	})
	return err
}

func (c *checker) meta() error {
	ctx, cancel := context.WithTimeout(c.ctx, c.l.timeout)
	defer cancel()
	resp, err := c.l.kv.Get(ctx, c.l.k.meta(), withRev(c.rev)...)
	if err != nil {
		return err
	}
	if len(resp.Kvs) == 0 && len(c.keys) > 0 {
		c.report("the schema version key %s is missing", c.l.k.meta())
	} else if len(resp.Kvs) > 0 && string(resp.Kvs[0].Value) != schemaVersion {
		c.report("schema version %q, want %q", resp.Kvs[0].Value, schemaVersion)
	}
	return nil
}

func (c *checker) bindings() error {
	c.byKey = map[string]bindingRecord{}
	var chunked []bindingRecord
	err := c.each("b", func(rest []byte, kv *mvccpb.KeyValue) {
		rec, err := decodeBinding(kv)
		if err != nil {
			c.report("%v", err)
			return
		}
		if string(rest) != string(keys.Key(rec.Repo, rec.Tag)) {
			c.report("binding under key %q is for %s:%s", kv.Key, rec.Repo, rec.Tag)
			return
		}
		c.byKey[string(rest)] = rec
		if _, err := storage.NormalizeBindings([]storage.Binding{rec.Binding}); err != nil {
			c.report("binding %s:%s: %v", rec.Repo, rec.Tag, err)
		}
		if rec.Gen == "" {
			c.report("binding %s:%s has no generation", rec.Repo, rec.Tag)
		}
		if !c.keys[c.l.k.repo(rec.Repo)] {
			c.report("binding %s:%s lacks its repository key", rec.Repo, rec.Tag)
		}
		for _, d := range rec.RefDigests() {
			if !c.keys[c.l.k.ref(rec.Repo, string(d), rec.Tag, rec.Gen)] {
				c.report("binding %s:%s lacks its index entry for %s", rec.Repo, rec.Tag, d)
			}
		}
		if rec.Chunks > 0 {
			chunked = append(chunked, rec)
		}
	})
	if err != nil {
		return err
	}
	for _, rec := range chunked {
		if err := c.l.loadManifest(c.ctx, c.rev, &rec); err != nil {
			c.report("%v", err)
		}
	}
	return nil
}

func (c *checker) repos() error {
	bound := map[string]bool{}
	for _, b := range c.byKey {
		bound[b.Repo] = true
	}
	p := c.l.k.prefix("repo")
	for k := range c.keys {
		if repo, ok := strings.CutPrefix(k, p); ok && !bound[repo] {
			c.report("repository key %q has no binding", repo)
		}
	}
	return nil
}

// refs checks the index entries of each binding's own generation: they
// must name digests the binding references.
func (c *checker) refs() error {
	p := c.l.k.prefix("ref")
	for k := range c.keys {
		rest, ok := strings.CutPrefix(k, p)
		if !ok {
			continue
		}
		parts, ok := keys.Split([]byte(rest), 4)
		if !ok {
			c.report("index key %q is malformed", k)
			continue
		}
		repo, d, tag, gen := parts[0], digest.Digest(parts[1]), parts[2], parts[3]
		b, found := c.byKey[string(keys.Key(repo, tag))]
		if found && b.Gen == gen && !slices.Contains(b.RefDigests(), d) {
			c.report("index entry %s:%s@%s points at a binding that does not reference %s", repo, tag, d, d)
		}
	}
	return nil
}

func (c *checker) events() error {
	err := c.each("ev", func(rest []byte, kv *mvccpb.KeyValue) {
		e, err := decodeEvent(kv)
		if err != nil {
			c.report("%v", err)
			return
		}
		if string(kv.Key) != c.l.k.event(e.Seq) {
			c.report("event %d is stored under key %x", e.Seq, rest)
			return
		}
		c.maxSeq = max(c.maxSeq, e.Seq)
		for _, ix := range c.l.eventIndexKeys(e) {
			if !c.keys[ix] {
				c.report("event %d lacks its %s entry", e.Seq, indexName(c.l.k, ix))
			}
		}
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.ctx, c.l.timeout)
	defer cancel()
	resp, err := c.l.kv.Get(ctx, c.l.k.seq(), withRev(c.rev)...)
	if err != nil {
		return err
	}
	var last uint64
	if len(resp.Kvs) > 0 {
		if last, err = strconv.ParseUint(string(resp.Kvs[0].Value), 10, 64); err != nil {
			c.report("event sequence %q is not a number", resp.Kvs[0].Value)
			return nil
		}
	}
	if c.maxSeq > last {
		c.report("event sequence is %d but event %d exists", last, c.maxSeq)
	}
	return nil
}

// indexName names the index a key belongs to, for problems.
func indexName(k keyspace, key string) string {
	for _, ix := range []string{"evr", "evt", "evk"} {
		if strings.HasPrefix(key, k.prefix(ix)) {
			return map[string]string{"evr": "by-repository", "evt": "by-tag", "evk": "by-kind"}[ix]
		}
	}
	return "index"
}

// eventIndexes checks that every history index entry points at an event
// that has it.
func (c *checker) eventIndexes() error {
	for _, ix := range []string{"evr", "evt", "evk"} {
		p := c.l.k.prefix(ix)
		var missingEvents []string
		var seqs []uint64
		for k := range c.keys {
			if !strings.HasPrefix(k, p) {
				continue
			}
			seq, ok := invertedSeq([]byte(k))
			if !ok || len(k) < len(p)+9 {
				c.report("%s key %q is malformed", indexName(c.l.k, k), k)
				continue
			}
			missingEvents, seqs = append(missingEvents, k), append(seqs, seq)
		}
		gets := make([]get, len(seqs))
		for i, s := range seqs {
			gets[i] = get{key: c.l.k.event(s)}
		}
		got, _, err := c.l.read(c.ctx, c.rev, gets)
		if err != nil {
			return err
		}
		for i, k := range missingEvents {
			if len(got[i]) == 0 {
				c.report("%s entry %q points at missing event %d", indexName(c.l.k, k), k[len(p):len(k)-8], seqs[i])
				continue
			}
			e, err := decodeEvent(got[i][0])
			if err != nil {
				continue // reported by c.events
			}
			if !slices.Contains(c.l.eventIndexKeys(e), k) {
				c.report("%s entry %q points at event %d, which is not indexed there", indexName(c.l.k, k), k[len(p):len(k)-8], seqs[i])
			}
		}
	}
	return nil
}

func (c *checker) reservations() error {
	return c.each("res", func(rest []byte, kv *mvccpb.KeyValue) {
		r, err := decodeReservation(kv)
		if err != nil {
			c.report("%v", err)
			return
		}
		if string(rest) != r.ID {
			c.report("reservation %s is stored under key %q", r.ID, kv.Key)
		}
		for _, tag := range r.HeldTags() {
			if !c.keys[c.l.k.reservedTag(r.Repo, tag, r.ID)] {
				c.report("reservation %s lacks its tag entry for %s:%s", r.ID, r.Repo, tag)
			}
		}
		if len(r.Holds()) > 0 && !c.keys[c.l.k.reservedDigests(r.Repo, string(r.Kind), r.ID)] {
			c.report("reservation %s lacks its digest entry for %s", r.ID, r.Repo)
		}
	})
}

// holders checks the tag holder and digest entries against their
// reservations.
func (c *checker) holders() error {
	res := map[string]storage.Reservation{}
	if err := c.each("res", func(_ []byte, kv *mvccpb.KeyValue) {
		if r, err := decodeReservation(kv); err == nil {
			res[r.ID] = r
		}
	}); err != nil {
		return err
	}
	if err := c.each("rtag", func(rest []byte, kv *mvccpb.KeyValue) {
		parts, ok := keys.Split(rest, 3)
		if !ok {
			c.report("reserved tag key %q is malformed", kv.Key)
			return
		}
		repo, tag, id := parts[0], parts[1], parts[2]
		r, found := res[id]
		switch {
		case !found:
			c.report("reserved tag %s:%s points at missing reservation %s", repo, tag, id)
		case r.Repo != repo || !slices.Contains(r.HeldTags(), tag) || string(kv.Value) != id:
			c.report("reserved tag %s:%s does not match reservation %s", repo, tag, id)
		}
	}); err != nil {
		return err
	}
	return c.each("rdig", func(rest []byte, kv *mvccpb.KeyValue) {
		parts, ok := keys.Split(rest, 3)
		if !ok {
			c.report("reserved digest key %q is malformed", kv.Key)
			return
		}
		repo, kind, id := parts[0], parts[1], parts[2]
		r, found := res[id]
		if !found {
			c.report("reserved digests of %s point at missing reservation %s", repo, id)
			return
		}
		want, _ := json.Marshal(r)
		var got storage.Reservation
		if err := json.Unmarshal(kv.Value, &got); err != nil || r.Repo != repo || string(r.Kind) != kind || !sameJSON(got, want) {
			c.report("reserved digests of %s do not match reservation %s", repo, id)
		}
	})
}

// sameJSON reports whether v encodes to j.
func sameJSON(v any, j []byte) bool {
	b, err := json.Marshal(v)
	return err == nil && string(b) == string(j)
}

func (c *checker) manifests() error {
	return c.each("mf", func(rest []byte, kv *mvccpb.KeyValue) {
		m, err := decodeManifest(kv)
		if err != nil {
			c.report("%v", err)
			return
		}
		if string(rest) != string(keys.Key(m.Repo, string(m.Digest))) {
			c.report("manifest under key %q is for %s@%s", kv.Key, m.Repo, m.Digest)
		}
	})
}

func (c *checker) pulls() error {
	return c.each("pull", func(rest []byte, kv *mvccpb.KeyValue) {
		if _, ok := keys.Split(rest, 2); !ok {
			c.report("pull key %q is malformed", kv.Key)
		}
		if _, err := decodePullTime(kv); err != nil {
			c.report("%v", err)
		}
	})
}
