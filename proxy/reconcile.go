package proxy

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/taglock/taglock/storage"
)

// Reconcile settles reservations left by a crash or by a push whose outcome
// was unclear: a tag the upstream now holds with the reserved digest is
// committed, any other is released. A reservation whose upstream lookup fails
// stays, so conflicting pushes keep waiting rather than guessing. Reservations
// of requests still in flight in this process are skipped.
func (s *Server) Reconcile(ctx context.Context) error {
	pending, err := s.ledger.Reservations(ctx)
	if err != nil {
		return fmt.Errorf("%w: reservations: %v", ErrLedger, err)
	}
	var firstErr error
	for _, res := range pending {
		if _, busy := s.inflight.Load(res.ID); busy {
			continue
		}
		if err := s.reconcileOne(ctx, res); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

func (s *Server) reconcileOne(ctx context.Context, res storage.Reservation) error {
	now := s.now()
	var (
		bindings []storage.Binding
		events   []storage.Event
		body     []byte
		refs     manifestRefs
	)
	for _, tag := range res.Tags {
		b, mediaType, found, err := s.getManifest(ctx, http.Header{}, res.Repo, tag)
		if err != nil {
			return fmt.Errorf("reconcile %s:%s: %w", res.Repo, tag, err)
		}
		if !found || res.Digest.Algorithm().FromBytes(b) != res.Digest {
			continue
		}
		if refs, err = parseManifest(mediaType, b); err != nil {
			return fmt.Errorf("reconcile %s:%s: %w", res.Repo, tag, err)
		}
		body = b
		mode, rule := s.im.ModeFor(res.Repo, tag)
		prev, err := s.ledger.Binding(ctx, res.Repo, tag)
		kind := storage.EventAccepted
		if err == nil && prev.Digest == res.Digest {
			kind = storage.EventIdentical
		} else if err == nil {
			kind = storage.EventMoved
		}
		closure, err := s.closure(ctx, http.Header{}, res.Repo, refs)
		if err != nil {
			return fmt.Errorf("reconcile %s:%s: %w", res.Repo, tag, err)
		}
		nb := storage.Binding{Repo: res.Repo, Tag: tag, Digest: res.Digest, MediaType: refs.MediaType, Size: int64(len(b)),
			Mode: mode.String(), Rule: rule, PushedAt: res.CreatedAt, PushedBy: "unknown (reconciled)", Closure: closure}
		if kind == storage.EventIdentical {
			nb.PushedAt, nb.PushedBy = prev.PushedAt, prev.PushedBy
		}
		if mode.String() == "immutable" {
			nb.Manifest = b
		}
		bindings = append(bindings, nb)
		events = append(events, storage.Event{Time: now, Kind: kind, Repo: res.Repo, Tag: tag, Digest: res.Digest,
			Previous: prev.Digest, Message: "reconciled: the upstream holds the reserved digest"})
	}
	if err := s.ledger.Commit(ctx, res.ID, bindings, events); err != nil {
		return fmt.Errorf("%w: reconcile commit: %v", ErrLedger, err)
	}
	if body != nil {
		s.recordManifest(ctx, res.Repo, res.Digest, int64(len(body)), refs)
	}
	s.log.Info().Str("repo", res.Repo).Strs("tags", res.Tags).Str("digest", res.Digest.String()).
		Int("committed", len(bindings)).Msg("reconciled reservation")
	return nil
}

// reconcileLater settles a reservation whose push had an unclear outcome,
// in the background, retrying until it is settled or the server stops.
func (s *Server) reconcileLater(res storage.Reservation) {
	s.inflight.Delete(res.ID)
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		delay := 100 * time.Millisecond
		for attempt := 0; attempt < 20; attempt++ {
			ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
			err := s.reconcileOne(ctx, res)
			cancel()
			if err == nil {
				return
			}
			s.log.Warn().Err(err).Str("reservation", res.ID).Msg("reconcile failed; will retry")
			time.Sleep(delay)
			delay = min(2*delay, 30*time.Second)
		}
	}()
}

// releaseOrLog releases a reservation after a definite failure.
func (s *Server) releaseOrLog(id string) {
	if err := s.ledger.Release(context.Background(), id); err != nil {
		s.log.Error().Err(err).Str("reservation", id).Msg("could not release reservation; it will be reconciled")
	}
}
