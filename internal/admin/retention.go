package admin

import (
	"context"
	"errors"
	"net/http"

	"github.com/taglock/taglock/internal/retention"
)

// Retention plans and applies retention; *retention.Runner provides it.
type Retention interface {
	Plan(ctx context.Context) (retention.Report, error)
	Apply(ctx context.Context, o retention.ApplyOptions) (retention.Result, error)
}

var _ Retention = (*retention.Runner)(nil)

// ApplyResponse is the body of POST /taglock/v1/admin/retention/apply. A
// run that stopped early (refused over max_deletions, or failed) still
// carries what it did, with the error.
type ApplyResponse struct {
	Result retention.Result `json:"result"`
	// Error is why the run stopped; empty when it finished.
	Error string `json:"error,omitempty"`
	// TooMany is set when the plan was refused over max_deletions.
	TooMany bool `json:"tooMany,omitempty"`
}

// mountRetention adds the retention routes; a nil r answers them with 503.
func (h *Handler) mountRetention(r Retention) {
	h.mux.HandleFunc("POST "+Prefix+"admin/retention/plan", h.admin(func(w http.ResponseWriter, req *http.Request) {
		if r == nil {
			h.fail(w, req, ErrNoUpstream)
			return
		}
		rep, err := r.Plan(req.Context())
		if err != nil {
			h.fail(w, req, err)
			return
		}
		writeJSON(w, http.StatusOK, rep)
	}))
	h.mux.HandleFunc("POST "+Prefix+"admin/retention/apply", h.admin(func(w http.ResponseWriter, req *http.Request) {
		if r == nil {
			h.fail(w, req, ErrNoUpstream)
			return
		}
		// The run goes on if the caller goes away: an apply is not
		// half-done because a terminal closed.
		res, err := r.Apply(context.WithoutCancel(req.Context()), retention.ApplyOptions{})
		if res.Deleted+res.Failed > 0 || err != nil {
			// Retention audits each deletion; this names who ran it.
			h.local.Audit.Info().Str("event", "retention-applied").Int("deleted", res.Deleted).Int("skipped", res.Skipped).
				Int("failed", res.Failed).AnErr("error", err).Str("user", Caller(req.Context())).Msg("retention apply on the admin socket")
		}
		out := ApplyResponse{Result: res}
		if err != nil {
			out.Error, out.TooMany = err.Error(), errors.Is(err, retention.ErrTooManyDeletions)
		}
		writeJSON(w, http.StatusOK, out)
	}))
}

// RetentionPlan asks the server for a retention plan.
func (c *Client) RetentionPlan(ctx context.Context) (retention.Report, error) {
	var r retention.Report
	err := c.getJSON(ctx, http.MethodPost, Prefix+"admin/retention/plan", nil, struct{}{}, &r)
	return r, err
}

// RetentionApply asks the server to apply retention. The error is the run's
// own, wrapping retention.ErrTooManyDeletions when it was refused.
func (c *Client) RetentionApply(ctx context.Context) (retention.Result, error) {
	var r ApplyResponse
	if err := c.getJSON(ctx, http.MethodPost, Prefix+"admin/retention/apply", nil, struct{}{}, &r); err != nil {
		return r.Result, err
	}
	switch {
	case r.TooMany:
		return r.Result, &remoteError{msg: r.Error, err: retention.ErrTooManyDeletions}
	case r.Error != "":
		return r.Result, errors.New(r.Error)
	}
	return r.Result, nil
}

// remoteError is an error from the server that wraps a known sentinel.
type remoteError struct {
	msg string
	err error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.err }
