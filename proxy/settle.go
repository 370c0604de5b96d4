package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// Reservations is this process's side of the ledger's reservation
// protocol (see storage.Reservation): it takes reservations for requests in
// flight and marks them as its own, waits for conflicting ones, and settles
// those whose outcome it did not learn.
type Reservations struct {
	ledger Ledger
	read   reader
	states states
	audit  auditor
	log    zerolog.Logger
	now    func() time.Time
	// wait bounds how long a request waits for a conflicting one.
	wait time.Duration
	// timeout is the deadline of a request to the upstream.
	timeout time.Duration
	// margin is how long after its deadline a request may still land.
	margin time.Duration
	// owner names this process in its reservations.
	owner string
	// elsewhere reports whether another live process settles the
	// reservations of an owner (Options.SettledElsewhere); nil: none does.
	elsewhere func(owner string) bool

	inflight    sync.Map      // reservation ID -> struct{}: reservations requests of this process are still working on
	creds       sync.Map      // reservation ID -> Authorization of the request in flight, for the settler
	settleCreds sync.Map      // reservation ID -> Authorization the settler asks the upstream with
	unrecorded  sync.Map      // reservation ID -> struct{}: writes the upstream carried out that the ledger could not record yet
	kick        chan struct{} // wakes the settler
}

// The settler finds out what became of requests whose outcome taglock did
// not learn: a push or delete the upstream did not answer (or answered with
// a 5xx), one whose result the ledger could not record, and every
// reservation a crashed process left. An outcome that is unknown stays
// unknown until it cannot change any more: a reservation is settled by what
// the upstream shows when that is final (the pushed tag holds the digest;
// the deleted tag, manifest or blob is gone), and otherwise only once its
// request can no longer land, SettleMargin after its deadline. Until then
// it keeps holding its tags and digests, so no other push or delete can
// slip in between.

// DefaultSettleMargin is how long after its deadline a request to the
// upstream is still taken to be able to land, when Options.SettleMargin is
// zero.
const DefaultSettleMargin = 30 * time.Second

// errInDoubt means a reservation's outcome is not known yet.
var errInDoubt = errors.New("outcome not known yet")

// Reconcile tries once to settle every pending reservation that is this
// process's to settle (see ours), and returns the first error; reservations
// whose outcome is still in doubt are not errors.
func (s *Reservations) Reconcile(ctx context.Context) error {
	noted := s.unrecordedIDs()
	pending, err := s.ledger.Reservations(ctx)
	if err != nil {
		return fmt.Errorf("%w: reservations: %v", ErrLedger, err)
	}
	s.forgetSettled(noted, pending)
	var firstErr error
	for _, res := range pending {
		if !s.ours(res) {
			continue
		}
		if err := s.settle(ctx, res); err != nil && !errors.Is(err, errInDoubt) && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// Run runs the settler until ctx ends: at once, then whenever a request
// hands over a reservation and every interval while any is pending. Each
// reservation is retried with a backoff from interval up to 10s. It
// settles the reservations that are this process's to settle (see ours).
func (s *Reservations) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = time.Second
	}
	next := map[string]time.Time{}
	delays := map[string]time.Duration{}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		noted := s.unrecordedIDs()
		pending, err := s.ledger.Reservations(ctx)
		if err != nil && ctx.Err() == nil {
			s.log.Warn().Err(err).Msg("settler: cannot list reservations")
		}
		if err == nil {
			s.forgetSettled(noted, pending)
		}
		now := s.now()
		live := map[string]bool{}
		for _, res := range pending {
			live[res.ID] = true
			if !s.ours(res) || now.Before(next[res.ID]) {
				continue
			}
			err := s.settle(ctx, res)
			if err == nil {
				continue
			}
			d := min(max(2*delays[res.ID], interval), 10*time.Second)
			delays[res.ID], next[res.ID] = d, now.Add(d)
			if !errors.Is(err, errInDoubt) {
				s.log.Warn().Err(err).Str("reservation", res.ID).Msg("settler: will retry")
			}
		}
		for id := range next {
			if !live[id] {
				delete(next, id)
				delete(delays, id)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.kick:
		}
	}
}

// unrecordedIDs lists the writes noted as unrecorded (stuck).
func (s *Reservations) unrecordedIDs() noted {
	var n noted
	s.unrecorded.Range(func(k, _ any) bool { n.unrecorded = append(n.unrecorded, k.(string)); return true })
	s.settleCreds.Range(func(k, _ any) bool { n.creds = append(n.creds, k.(string)); return true })
	return n
}

// noted is what this process remembers about reservations handed to the
// settler: the writes it could not record, and the credentials to settle
// with.
type noted struct {
	unrecorded, creds []string
}

// forgetSettled drops what n notes about reservations no longer pending:
// another process sharing the ledger (a replica's settler) recorded or
// released them, so this one has nothing left to record, its writes need
// not wait for it any more, and the credentials it kept to settle them
// are dropped. n must be read before pending, so that every reservation in
// it was stored before the listing and its absence means it is settled.
func (s *Reservations) forgetSettled(n noted, pending []storage.Reservation) {
	live := make(map[string]bool, len(pending))
	for _, res := range pending {
		live[res.ID] = true
	}
	for _, id := range n.unrecorded {
		if !live[id] {
			s.unrecorded.Delete(id)
			s.log.Info().Str("reservation", id).Msg("settler: another process settled a write this one could not record")
		}
	}
	for _, id := range n.creds {
		if !live[id] {
			s.settleCreds.Delete(id) // settled elsewhere: not needed, and not to be kept
		}
	}
}

// ours reports whether the settler should settle res: no request of this
// process is working on it, and it is not another process's to settle
// (Options.SettledElsewhere). With several processes on one ledger, each
// settles its own reservations, for which it may hold the client's
// credentials, and one of them settles those of processes that died.
func (s *Reservations) ours(res storage.Reservation) bool {
	if _, busy := s.inflight.Load(res.ID); busy {
		return false
	}
	return res.Owner == s.owner || s.elsewhere == nil || !s.elsewhere(res.Owner)
}

// done ends a request's claim on reservation id: the settler may take it
// from now on, if it is still pending.
func (s *Reservations) done(id string) {
	s.inflight.Delete(id)
	s.creds.Delete(id)
}

// stuck notes that the upstream carried out the write of res but the
// ledger could not record it: until the settler has recorded it, the ledger
// is not trusted with new writes (a full disk, say, that took the small
// reservation and refused the commit), so they are refused before they
// reach the upstream (writable).
func (s *Reservations) stuck(res storage.Reservation) {
	s.unrecorded.Store(res.ID, struct{}{})
	s.handOver(res)
}

// writable fails, wrapping ErrLedger, while a write the upstream carried out
// is not recorded in the ledger yet.
func (s *Reservations) writable() error {
	stuck := false
	s.unrecorded.Range(func(any, any) bool { stuck = true; return false })
	if stuck {
		return fmt.Errorf("%w: a write the upstream carried out could not be recorded yet; writes wait until it is", ErrLedger)
	}
	return nil
}

// handOver hands a reservation whose outcome is unknown to the settler,
// with the credentials of its request, which the settler needs to see the
// outcome on an upstream that checks them.
func (s *Reservations) handOver(res storage.Reservation) {
	if a, ok := s.creds.Load(res.ID); ok {
		s.settleCreds.Store(res.ID, a)
	}
	s.inflight.Delete(res.ID)
	s.log.Warn().Str("reservation", res.ID).Str("repo", res.Repo).Strs("tags", res.Tags).Str("digest", res.Digest.String()).
		Str("kind", string(res.Kind)).Msg("outcome unknown; the settler holds the reservation until the upstream shows it")
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// releaseOrLog releases a reservation after a definite failure.
func (s *Reservations) releaseOrLog(id string) {
	if err := s.ledger.Release(context.Background(), id); err != nil {
		s.log.Error().Err(err).Str("reservation", id).Msg("could not release reservation; it will be reconciled")
	}
}

// settle settles one reservation if its outcome is known, and returns an
// error wrapping errInDoubt when it is not yet. Once its request can no
// longer land, a reservation whose outcome the upstream will not show (it
// is unreachable, or refuses taglock's lookups: an upstream that checks
// the client's credentials, after a restart lost them) is released rather
// than held for ever: the tags are then free, and a tag the push did land
// is adopted from the upstream by the next request that needs it.
func (s *Reservations) settle(ctx context.Context, res storage.Reservation) error {
	var err error
	if res.IsDelete() {
		err = s.settleDelete(ctx, res)
	} else {
		err = s.settlePush(ctx, res)
	}
	switch {
	case err == nil:
		s.settleCreds.Delete(res.ID)
		s.unrecorded.Delete(res.ID)
	case !errors.Is(err, errInDoubt) && !errors.Is(err, ErrLedger) && !res.InDoubt(s.now(), s.margin):
		if rerr := s.ledger.Release(ctx, res.ID); rerr != nil {
			return fmt.Errorf("%w: release after %v: %v", ErrLedger, err, rerr)
		}
		s.settleCreds.Delete(res.ID)
		s.unrecorded.Delete(res.ID)
		s.log.Error().Err(err).Str("reservation", res.ID).Str("target", describe(res)).
			Msg("settler: the upstream does not show the outcome and the request can no longer land; released")
		s.audit.audit.Warn().Str("event", "settle-released").Str("repo", res.Repo).Strs("tags", res.Tags).Str("digest", res.Digest.String()).
			Str("reason", err.Error()).Msg("released a reservation whose outcome the upstream would not show")
		return nil
	}
	return err
}

// settleAuth is the header the settler asks the upstream with for res.
func (s *Reservations) settleAuth(res storage.Reservation) http.Header {
	if a, ok := s.settleCreds.Load(res.ID); ok {
		return http.Header{"Authorization": {a.(string)}}
	}
	return http.Header{}
}

// settlePush commits the tags the upstream holds with the reserved digest
// once all of them do, or, once the push can no longer land, those that do,
// releasing the rest.
func (s *Reservations) settlePush(ctx context.Context, res storage.Reservation) error {
	now := s.now()
	var (
		bindings []storage.Binding
		events   []storage.Event
		body     []byte
		refs     manifestRefs
	)
	for _, tag := range res.Tags {
		b, mediaType, found, err := s.read.manifest(ctx, s.settleAuth(res), res.Repo, tag)
		if err != nil {
			return fmt.Errorf("settle %s:%s: %w", res.Repo, tag, err)
		}
		if !found || res.Digest.Algorithm().FromBytes(b) != res.Digest {
			continue
		}
		if refs, err = parseManifest(mediaType, b); err != nil {
			return fmt.Errorf("settle %s:%s: %w", res.Repo, tag, err)
		}
		body = b
		st, err := s.states.read(ctx, res.Repo, tag)
		if err != nil {
			return err
		}
		d := tagDecision{tagState: st, verdict: policy.DecideWrite(st.mode, st.bound, res.Digest)}
		if d.verdict == policy.Deny {
			// The reservation kept the binding as the push found it, so
			// this means the binding was rewritten around taglock (an
			// import): verify reports the tag, repair puts it back.
			s.log.Error().Str("repo", res.Repo).Str("tag", tag).Str("bound", st.bound.String()).Str("upstream", res.Digest.String()).
				Msg("settle: the upstream holds a digest the tag's binding refuses; not recording it")
			continue
		}
		user := res.User
		if user == "" {
			user = "unknown"
		}
		nb, ev := newBinding(res, d, now, user+" (reconciled)", b, refs)
		ev.Message = "reconciled: the upstream holds the reserved digest"
		bindings = append(bindings, nb)
		events = append(events, ev)
	}
	if len(bindings) < len(res.Tags) && res.InDoubt(now, s.margin) {
		return fmt.Errorf("push %s: %w", describe(res), errInDoubt)
	}
	var ms []storage.Manifest
	if body != nil {
		ms = append(ms, manifestRecord(res.Repo, res.Digest, int64(len(body)), refs))
	}
	if err := s.ledger.Commit(ctx, res.ID, bindings, events, ms...); err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return nil // settled meanwhile
		}
		return fmt.Errorf("%w: settle commit: %v", ErrLedger, err)
	}
	s.log.Info().Str("reservation", res.ID).Str("repo", res.Repo).Strs("tags", res.Tags).Str("digest", res.Digest.String()).
		Int("committed", len(bindings)).Msg("settled push")
	return nil
}

// settleDelete records a delete once the upstream no longer holds what it
// removes, and releases it once it can no longer land.
func (s *Reservations) settleDelete(ctx context.Context, res storage.Reservation) error {
	path := "/v2/" + res.Repo + "/manifests/" + res.Digest.String()
	switch {
	case len(res.Tags) > 0:
		path = "/v2/" + res.Repo + "/manifests/" + res.Tags[0]
	case res.Blob:
		path = "/v2/" + res.Repo + "/blobs/" + res.Digest.String()
	}
	gone, err := s.read.absent(ctx, s.settleAuth(res), path)
	if err != nil {
		return fmt.Errorf("settle delete of %s: %w", describe(res), err)
	}
	if gone {
		ev := storage.Event{Time: s.now(), Kind: storage.EventDeleted, User: res.User,
			Message: "reconciled: the upstream no longer holds it"}
		marked, err := s.ledger.CommitDelete(ctx, res.ID, ev)
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("%w: settle delete: %v", ErrLedger, err)
		}
		s.log.Info().Str("reservation", res.ID).Str("target", describe(res)).Int("deleted", len(marked)).Msg("settled delete")
		return nil
	}
	if res.InDoubt(s.now(), s.margin) {
		return fmt.Errorf("delete of %s: %w", describe(res), errInDoubt)
	}
	if err := s.ledger.Release(ctx, res.ID); err != nil {
		return fmt.Errorf("%w: settle release: %v", ErrLedger, err)
	}
	s.log.Info().Str("reservation", res.ID).Str("target", describe(res)).Msg("settled delete: it did not happen")
	return nil
}
