package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// claim picks the ID of a reservation a request of this process is about
// to take, and marks it as this process's before the ledger stores it, so
// the settler never mistakes it for one left behind. auth is the request's
// Authorization, which the settler needs if the outcome is unknown. The
// request calls done when it has finished with it.
func (s *Reservations) claim(auth string) (string, error) {
	id, err := storage.NewReservationID()
	if err != nil {
		return "", err
	}
	s.inflight.Store(id, struct{}{})
	if auth != "" {
		s.creds.Store(id, auth)
	}
	return id, nil
}

// waiter returns the function a request calls when the ledger refuses a
// reservation: it waits and returns nil while another reservation holds
// what the request needs and the wait has time left, and otherwise returns
// the error to answer with.
//
// Each wait is twice the last, from 20ms up to 320ms: a request retried
// while a slow push holds its tag decides again (an upstream lookup, for a
// tag the ledger has not bound) a few times a second, not fifty.
func (s *Reservations) waiter() func(context.Context, error) error {
	deadline := s.now().Add(s.wait)
	pause := 20 * time.Millisecond
	return func(ctx context.Context, err error) error {
		var busy *storage.BusyError
		if !errors.As(err, &busy) {
			return fmt.Errorf("%w: reserve: %v", ErrLedger, err)
		}
		if s.now().After(deadline) {
			_, mine := s.inflight.Load(busy.Holder.ID)
			return &busyError{BusyError: busy, settling: !mine, settleBy: busy.Holder.DoubtEnds(s.margin)}
		}
		wait := pause
		pause = min(2*pause, 320*time.Millisecond)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
			return nil
		}
	}
}

// removal is one delete of a tag, a manifest or a blob.
type removal struct {
	repo string
	// tag is set for a delete by tag.
	tag string
	// digest is the manifest or blob deleted, or the digest the tag is
	// bound to ("" when the ledger has no binding for it).
	digest digest.Digest
	blob   bool
	// expect is, for a delete by tag, the binding the delete was decided
	// on; a change makes remove return an error wrapping
	// storage.ErrChanged.
	expect storage.Seen
	// mode is, for a delete by tag, the mode its tombstone records; nil
	// keeps the binding's.
	mode *policy.Mode
	// check, when set, decides the delete once the reservation holds, on
	// every binding of repo that references digest; an error refuses it.
	check func([]storage.Binding) error
	// send makes the upstream request, giving up at deadline.
	send func(ctx context.Context, deadline time.Time) (*http.Response, error)
	// event is the template of the history events of what it removes.
	event storage.Event
	// auth is the client's Authorization, which the settler asks the
	// upstream with if the outcome is unknown; "" for none.
	auth string
}

// remove runs one delete under a delete reservation: it reserves what the
// delete removes (waiting while a push or another delete holds it), decides
// it with check on bindings no push can change meanwhile, sends it, and
// records what the upstream removed in the transaction that ends the
// reservation. A 2xx or a 404 (already gone) marks the removed tags deleted;
// another answer releases the reservation; no answer, or a 5xx, leaves it to
// the settler. It returns the upstream's answer and the bindings marked
// deleted.
func (s *Reservations) remove(ctx context.Context, rm removal) (*http.Response, []storage.Binding, error) {
	if err := s.writable(); err != nil {
		return nil, nil, err
	}
	id, err := s.claim(rm.auth)
	if err != nil {
		return nil, nil, err
	}
	defer s.done(id)
	res := storage.Reservation{ID: id, Kind: storage.ReserveDelete, Repo: rm.repo, Digest: rm.digest, Blob: rm.blob,
		Mode: rm.mode, Owner: s.owner, User: rm.event.User}
	if rm.tag != "" {
		res.Tags, res.Expect = []string{rm.tag}, map[string]storage.Seen{rm.tag: rm.expect}
	}
	wait := s.waiter()
	for {
		res.Deadline = s.now().Add(s.timeout)
		got, err := s.ledger.Reserve(ctx, res)
		if err == nil {
			res = got
			break
		}
		if errors.Is(err, storage.ErrChanged) {
			return nil, nil, err
		}
		if err := wait(ctx, err); err != nil {
			return nil, nil, err
		}
	}
	if rm.check != nil {
		bs, err := s.ledger.Referencing(ctx, rm.repo, rm.digest)
		if err == nil {
			err = rm.check(bs)
		} else {
			err = fmt.Errorf("%w: referencing %s: %v", ErrLedger, rm.digest, err)
		}
		if err != nil {
			s.releaseOrLog(res.ID)
			return nil, nil, err
		}
	}
	resp, err := rm.send(ctx, res.Deadline)
	if err != nil {
		s.handOver(res)
		return nil, nil, &unknownOutcome{op: "delete of " + describe(res), err: err}
	}
	switch {
	case resp.StatusCode/100 == 2 || resp.StatusCode == http.StatusNotFound:
		ev := rm.event
		ev.Time = s.now()
		gone, err := s.ledger.CommitDelete(ctx, res.ID, ev)
		if err != nil {
			drain(resp)
			s.stuck(res)
			return nil, nil, &unrecorded{op: "delete of " + describe(res), err: err}
		}
		return resp, gone, nil
	case resp.StatusCode >= 500:
		// It may have deleted before failing.
		s.handOver(res)
		defer drain(resp)
		return nil, nil, &unknownOutcome{op: "delete of " + describe(res), err: upstreamFailure(resp), answered: true}
	default:
		s.releaseOrLog(res.ID)
	}
	return resp, nil, nil
}

// describe names what a reservation is for, in messages.
func describe(res storage.Reservation) string {
	switch {
	case len(res.Tags) > 0:
		return res.Repo + ":" + strings.Join(res.Tags, ",")
	case res.Blob:
		return "blob " + res.Repo + "@" + res.Digest.String()
	}
	return res.Repo + "@" + res.Digest.String()
}
