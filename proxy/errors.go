package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	digest "github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// Reasons name why a request was refused; they label metrics and audit
// events.
const (
	ReasonTagMoved        = "immutable-tag-moved"
	ReasonTagDeleted      = "immutable-tag-deleted"
	ReasonManifestDeleted = "protected-manifest-deleted"
	ReasonBlobDeleted     = "protected-blob-deleted"
	ReasonNotPromoted     = "not-promoted"
	ReasonAccessDenied    = "access-denied"
)

// Violation is a request that would move or remove an immutable tag. It
// carries everything a person needs to act on the refusal.
type Violation struct {
	Reason    string        `json:"reason"`
	Repo      string        `json:"repository"`
	Tag       string        `json:"tag"`
	Recorded  digest.Digest `json:"recordedDigest,omitempty"`
	Attempted digest.Digest `json:"attemptedDigest,omitempty"`
	PushedAt  time.Time     `json:"firstPushed,omitzero"`
	PushedBy  string        `json:"firstPushedBy,omitempty"`
	Rule      string        `json:"rule"`
	Mode      string        `json:"mode,omitempty"`
	Hint      string        `json:"hint"`
	// Source is the promotion source repository (not-promoted only).
	Source string `json:"source,omitempty"`
	// text, when set, is the whole message (not-promoted carries the
	// policy's own explanation).
	text string
}

func (v *Violation) Error() string {
	if v.text != "" {
		return v.text
	}
	since := ""
	if !v.PushedAt.IsZero() {
		since = fmt.Sprintf(" (first pushed %s by %s)", v.PushedAt.UTC().Format(time.RFC3339), v.PushedBy)
	}
	switch v.Reason {
	case ReasonTagMoved:
		return fmt.Sprintf("tag %q is immutable and bound to %s%s; refusing %s (rule %s). %s",
			v.Repo+":"+v.Tag, v.Recorded, since, v.Attempted, v.Rule, v.Hint)
	case ReasonTagDeleted:
		bound := ""
		if v.Recorded != "" {
			bound = fmt.Sprintf("; it stays bound to %s%s", v.Recorded, since)
		}
		return fmt.Sprintf("tag %q is immutable (rule %s): deleting it is refused%s. %s", v.Repo+":"+v.Tag, v.Rule, bound, v.Hint)
	case ReasonManifestDeleted, ReasonBlobDeleted:
		what := "manifest"
		if v.Reason == ReasonBlobDeleted {
			what = "blob"
		}
		via := "points to it"
		if v.Recorded != v.Attempted {
			via = fmt.Sprintf("is bound to %s, which references it", v.Recorded)
		}
		pushed := ""
		if !v.PushedAt.IsZero() {
			pushed = fmt.Sprintf("first pushed %s by %s, ", v.PushedAt.UTC().Format(time.RFC3339), v.PushedBy)
		}
		return fmt.Sprintf("%s %s is protected: immutable tag %q %s (%srule %s); deleting it is refused. %s",
			what, v.Attempted, v.Repo+":"+v.Tag, via, pushed, v.Rule, v.Hint)
	}
	return fmt.Sprintf("tag %q: %s", v.Repo+":"+v.Tag, v.Reason)
}

// Errors that fail closed: taglock could not prove the request allowed.
var (
	// ErrLedger wraps a ledger failure; the request is refused with 503.
	ErrLedger = errors.New("ledger unavailable")
	// ErrLookup wraps a failed upstream lookup; the request is refused with 502.
	ErrLookup = errors.New("upstream lookup failed")
	// errUnreachable is an upstream that did not answer a request streamed
	// to it; nothing taglock decides rests on it.
	errUnreachable = errors.New("upstream unreachable")
	// ErrUnknownOutcome wraps a push or delete the upstream did not answer
	// clearly: it may or may not have happened, and the settler finds out.
	ErrUnknownOutcome = errors.New("outcome unknown")
	// errTooManyUploads refuses an upload over Options.MaxUploads.
	errTooManyUploads = errors.New("too many uploads in flight")
)

// busyError is a reservation another request held longer than the wait.
type busyError struct {
	*storage.BusyError
	// settling is true when no request of this process holds it: it is
	// an earlier request whose outcome the settler is finding out.
	settling bool
	// settleBy is when the settler gives up waiting for the upstream.
	settleBy time.Time
}

func (e *busyError) message() string {
	h := e.Holder
	since := h.CreatedAt.UTC().Format(time.RFC3339)
	subject := fmt.Sprintf("tag %q", e.Repo+":"+e.Tag)
	if e.Tag == "" {
		subject = e.Repo + "@" + e.Digest.String()
	}
	switch {
	case e.settling && h.IsDelete():
		return fmt.Sprintf("taglock: %s is held by an earlier delete of %s (since %s) whose outcome taglock is still settling with the upstream, at the latest by %s; nothing was changed; retry then",
			subject, describe(h), since, e.settleBy.UTC().Format(time.RFC3339))
	case e.settling:
		return fmt.Sprintf("taglock: %s is held by an earlier push of %s (since %s) whose outcome taglock is still settling with the upstream, at the latest by %s; nothing was changed; retry then",
			subject, h.Digest, since, e.settleBy.UTC().Format(time.RFC3339))
	case h.IsDelete():
		return fmt.Sprintf("taglock: %s is being deleted by another request (since %s); nothing was changed; retry shortly", subject, since)
	case e.Tag == "":
		return fmt.Sprintf("taglock: %s is part of a push of %s in flight (since %s); nothing was changed; retry shortly", subject, h.Digest, since)
	}
	return fmt.Sprintf("taglock: %s is being pushed with %s by another request (since %s); nothing was changed; retry shortly", subject, h.Digest, since)
}

// unknownOutcome is a push or delete the upstream did not answer, or
// answered without a usable status: whether it happened is not known yet.
type unknownOutcome struct {
	op  string
	err error
	// answered is true when err describes the upstream's own answer,
	// which the client may see; a transport error is not shown.
	answered bool
}

func (e *unknownOutcome) Error() string { return e.op + ": " + e.err.Error() }

// Unwrap returns ErrUnknownOutcome and the cause.
func (e *unknownOutcome) Unwrap() []error { return []error{ErrUnknownOutcome, e.err} }

// unrecorded is a push or delete the upstream carried out that the ledger
// could not record yet.
type unrecorded struct {
	op  string
	err error
}

func (e *unrecorded) Error() string {
	return e.op + ": the ledger could not record it: " + e.err.Error()
}

// Unwrap returns the ledger's error.
func (e *unrecorded) Unwrap() error { return e.err }

// unauthenticated is a request whose credentials do not do: answered 401
// with the authenticator's challenge.
type unauthenticated struct {
	challenge string // the WWW-Authenticate value
	msg       string
}

func (e *unauthenticated) Error() string { return e.msg }

// accessDenied is a request the access rules refuse.
type accessDenied struct {
	action   policy.Action
	repo     string
	tag      string
	rule     string
	identity policy.Identity
	reason   string
}

func (e *accessDenied) Error() string { return e.reason }

// tooLargeError is a manifest over the configured limit, in bytes.
type tooLargeError struct{ limit int64 }

func (e *tooLargeError) Error() string {
	return fmt.Sprintf("manifest exceeds the %d byte limit (%s)", e.limit, humanSize(e.limit))
}

// humanSize writes n bytes as KiB, MiB or GiB when it is a whole number of
// them.
func humanSize(n int64) string {
	for _, u := range []struct {
		unit string
		size int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.size && n%u.size == 0 {
			return fmt.Sprintf("%d %s", n/u.size, u.unit)
		}
	}
	return fmt.Sprintf("%d B", n)
}

// upstreamAnswer relays an upstream response as it is, for example a 401
// challenge to a lookup made with the client's credentials.
type upstreamAnswer struct {
	status int
	header http.Header
	body   []byte
}

func (u *upstreamAnswer) Error() string { return fmt.Sprintf("upstream answered %d", u.status) }

// writeError is the one place that turns an error into an OCI response.
// It returns the status written, for the request log.
func writeError(w http.ResponseWriter, err error, log *zerolog.Logger) int {
	var (
		v  *Violation
		re *requestError
		ua *upstreamAnswer
		ad *accessDenied
		un *unauthenticated
		gt *graphTooLarge
		be *busyError
		uo *unknownOutcome
		ur *unrecorded
		tl *tooLargeError
	)
	switch {
	case errors.As(err, &v):
		detail := *v
		return serveOCI(w, http.StatusForbidden, errcode.ErrorCodeDenied.WithMessage(v.Error()).WithDetail(detail))
	case errors.As(err, &re):
		return serveOCI(w, re.status, re.code.WithMessage(re.msg))
	case errors.As(err, &un):
		w.Header().Set("WWW-Authenticate", un.challenge)
		return serveOCI(w, http.StatusUnauthorized, errcode.ErrorCodeUnauthorized.WithMessage(un.msg))
	case errors.As(err, &ad):
		return serveOCI(w, http.StatusForbidden, errcode.ErrorCodeDenied.WithMessage(ad.reason).WithDetail(map[string]string{
			"identity": ad.identity.User, "action": string(ad.action), "repository": ad.repo, "tag": ad.tag, "rule": ad.rule}))
	case errors.As(err, &gt):
		return serveOCI(w, http.StatusBadRequest, errcode.ErrorCodeManifestInvalid.WithMessage(gt.Error()))
	case errors.As(err, &be):
		w.Header().Set("Retry-After", "1")
		return serveOCI(w, http.StatusServiceUnavailable, errcode.ErrorCodeUnavailable.WithMessage(be.message()))
	case errors.As(err, &uo):
		log.Error().Err(err).Msg("upstream did not answer a write: its outcome is being settled")
		what := "the upstream registry did not answer the " + uo.op
		if uo.answered {
			what = "for the " + uo.op + ", " + uo.err.Error()
		}
		return serveOCI(w, http.StatusBadGateway, errcode.ErrorCodeUnavailable.WithMessage(
			"taglock: "+what+", so whether it took effect is not known yet; taglock keeps what it touches held until the upstream shows the outcome. Retry the same request, or look the tag up (taglock resolve)"))
	case errors.As(err, &ur):
		log.Error().Err(err).Msg("ledger failure after an upstream write: its outcome is being settled")
		w.Header().Set("Retry-After", "1")
		return serveOCI(w, http.StatusServiceUnavailable, errcode.ErrorCodeUnavailable.WithMessage(
			"taglock: the upstream registry carried out the "+ur.op+", but the ledger could not record it yet; taglock keeps what it touches held and records it when the ledger recovers. Retry the same request"))
	case errors.As(err, &ua):
		for k, vs := range ua.header {
			w.Header()[k] = vs
		}
		w.Header().Del("Content-Length")
		w.WriteHeader(ua.status)
		_, _ = w.Write(ua.body)
		return ua.status
	case errors.As(err, &tl):
		return serveOCI(w, http.StatusRequestEntityTooLarge, errcode.ErrorCodeSizeInvalid.WithMessage("taglock: "+tl.Error()))
	case errors.Is(err, errTooManyUploads):
		w.Header().Set("Retry-After", "2")
		return serveOCI(w, http.StatusTooManyRequests,
			errcode.ErrorCodeTooManyRequests.WithMessage("taglock: "+err.Error()+"; nothing was changed, retry shortly"))
	case errors.Is(err, errGateHeld):
		w.Header().Set("Retry-After", "5")
		return serveOCI(w, http.StatusServiceUnavailable,
			errcode.ErrorCodeUnavailable.WithMessage("taglock: garbage collection is holding writes for longer than this write may wait; nothing was changed, retry shortly"))
	case errors.Is(err, context.Canceled):
		// The client went away; nobody reads an answer.
		return 499
	case errors.Is(err, ErrLedger):
		log.Error().Err(err).Msg("ledger failure: refusing request")
		return serveOCI(w, http.StatusServiceUnavailable,
			errcode.ErrorCodeUnavailable.WithMessage("taglock: the ledger cannot confirm this request is allowed, so it was refused; nothing was changed"))
	case errors.Is(err, errUnreachable):
		log.Error().Err(err).Msg("upstream unreachable")
		return serveOCI(w, http.StatusBadGateway,
			errcode.ErrorCodeUnavailable.WithMessage("taglock: the upstream registry could not be reached"))
	case errors.Is(err, ErrLookup), errors.Is(err, context.DeadlineExceeded):
		log.Error().Err(err).Msg("upstream lookup failure: refusing request")
		return serveOCI(w, http.StatusBadGateway,
			errcode.ErrorCodeUnavailable.WithMessage("taglock: the upstream registry did not answer a required lookup, so the request was refused; nothing was changed"))
	default:
		log.Error().Err(err).Msg("internal error: refusing request")
		return serveOCI(w, http.StatusInternalServerError,
			errcode.ErrorCodeUnknown.WithMessage("taglock: internal error; the request was refused"))
	}
}

// serveOCI writes the spec's {"errors":[...]} body with status.
func serveOCI(w http.ResponseWriter, status int, e errcode.Error) int {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Del("Content-Length")
	w.Header().Del("Docker-Content-Digest")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(errcode.Errors{e})
	return status
}

// drain reads and closes a response body so the connection is reused.
func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	_ = resp.Body.Close()
}
