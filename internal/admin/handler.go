package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/view"
	"github.com/taglock/taglock/storage"
)

// Prefix is the path every API route starts with.
const Prefix = "/taglock/v1/"

// DefaultRefusals is how many refusals /refusals returns without ?limit.
const DefaultRefusals = 50

// Options configures New.
type Options struct {
	// Ledger is the open ledger. Required.
	Ledger Ledger
	// Tools compare the ledger with the upstream; nil answers import and
	// verify calls with 503.
	Tools Tools
	// Log receives one line per failed or admin call. Default
	// zerolog.Nop().
	Log zerolog.Logger
	// Audit receives the audit events of admin calls that change the
	// ledger. Default nil: they go to Log.
	Audit *zerolog.Logger
	// Retention plans and applies retention; nil answers its calls with
	// 503.
	Retention Retention
	// Drift reports serve's scheduled verify for GET drift; nil reports
	// that none runs.
	Drift func() DriftStatus
	// Viewer returns what the caller of a read route may see: repositories,
	// tags, history, refusals and drift findings it may not see are left
	// out, and asking for one by name is 404. nil, or a nil Viewer, shows
	// everything.
	Viewer func(*http.Request) view.Viewer
	// Admin mounts the admin half (POST admin/...), which answers only
	// requests that arrived on a Unix socket. serve sets it on its admin
	// socket alone. Default false: the read routes only, and anything
	// under admin/ is 404.
	Admin bool
}

// Handler serves the API under Prefix.
type Handler struct {
	local  Local
	log    zerolog.Logger
	viewer func(*http.Request) view.Viewer
	mux    *http.ServeMux
}

// New returns the API handler. Mount it at Prefix.
func New(o Options) *Handler {
	audit := o.Log
	if o.Audit != nil {
		audit = *o.Audit
	}
	h := &Handler{local: Local{Ledger: o.Ledger, Tools: o.Tools, Audit: audit}, log: o.Log, viewer: o.Viewer, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET "+Prefix+"repositories", h.repositories)
	h.mux.HandleFunc("GET "+Prefix+"repositories/{path...}", h.tags)
	h.mux.HandleFunc("GET "+Prefix+"bindings/{ref...}", h.binding)
	h.mux.HandleFunc("GET "+Prefix+"history", h.history)
	h.mux.HandleFunc("GET "+Prefix+"refusals", h.refusals)
	h.mountDrift(o.Drift)
	if !o.Admin {
		h.mux.HandleFunc(Prefix+"admin/", func(w http.ResponseWriter, r *http.Request) { h.fail(w, r, errNoAdmin) })
		return h
	}
	h.mux.HandleFunc("POST "+Prefix+"admin/import", h.admin(h.importTags))
	h.mux.HandleFunc("POST "+Prefix+"admin/verify", h.admin(h.verify))
	h.mux.HandleFunc("POST "+Prefix+"admin/ledger/backup", h.admin(h.backup))
	h.mux.HandleFunc("POST "+Prefix+"admin/ledger/export", h.admin(h.export))
	h.mux.HandleFunc("POST "+Prefix+"admin/ledger/import", h.admin(h.importLedger))
	h.mux.HandleFunc("POST "+Prefix+"admin/ledger/check", h.admin(h.check))
	h.mountRetention(o.Retention)
	return h
}

// errNoAdmin answers admin calls wherever the admin half is not served.
var errNoAdmin = fmt.Errorf("%w: admin calls are answered only on serve's Unix socket (admin.socket); "+
	"run the taglock commands on the server's host", storage.ErrNotFound)

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// apiError is the body of every error answer.
type apiError struct {
	Error string `json:"error"`
	Code  string `json:"code"` // "not_found", "invalid", "contradiction", "unavailable" or "internal"
	// Contradictions lists the records of a refused ledger import.
	Contradictions []storage.Contradiction `json:"contradictions,omitempty"`
}

func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	status, code := http.StatusInternalServerError, "internal"
	var ce *storage.ContradictionError
	switch {
	case errors.As(err, &ce):
		writeJSON(w, http.StatusConflict, apiError{Error: err.Error(), Code: "contradiction", Contradictions: ce.Contradictions})
		return
	case errors.Is(err, storage.ErrNotFound):
		status, code = http.StatusNotFound, "not_found"
	case errors.Is(err, ErrInvalidRequest), errors.Is(err, storage.ErrInvalid):
		status, code = http.StatusBadRequest, "invalid"
	case errors.Is(err, ErrNoUpstream):
		status, code = http.StatusServiceUnavailable, "unavailable"
	}
	if status >= 500 {
		h.log.Error().Err(err).Str("path", r.URL.Path).Msg("admin api")
	}
	writeJSON(w, status, apiError{Error: err.Error(), Code: code})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// admin lets through only requests that arrived on a Unix socket, whose
// file permissions decided who may connect. No header, address or name a
// TCP client sends can make it answer.
func (h *Handler) admin(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if _, ok := r.Context().Value(http.LocalAddrContextKey).(*net.UnixAddr); !ok {
			h.fail(w, r, errNoAdmin)
			return
		}
		h.log.Info().Str("path", r.URL.Path).Str("caller", Caller(r.Context())).Msg("admin call")
		next(w, r)
	}
}

// stripped drops the manifest bytes, which the API never shows.
func stripped(bs ...storage.Binding) []storage.Binding {
	out := make([]storage.Binding, len(bs))
	for i, b := range bs {
		b.Manifest = nil
		out[i] = b
	}
	return out
}

// RepositoriesResponse is the body of GET /taglock/v1/repositories.
type RepositoriesResponse struct {
	Repositories []string `json:"repositories"` // one page, sorted
	// Next is the URL of the next page; "" on the last.
	Next string `json:"next,omitempty"`
}

func (h *Handler) repositories(w http.ResponseWriter, r *http.Request) {
	n, last, err := pageParams(r, view.DefaultPage)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	v := view.Of(h.viewer, r)
	repos, more, err := view.Visible(n, last, func(after string, limit int) ([]string, error) {
		return h.local.RepositoriesAfter(r.Context(), after, limit)
	}, func(repo string) string { return repo }, v.Repo)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	resp := RepositoriesResponse{Repositories: repos}
	if resp.Repositories == nil {
		resp.Repositories = []string{}
	}
	if more {
		resp.Next = nextPage(w, r, r.URL.Path, n, repos[len(repos)-1])
	}
	writeJSON(w, http.StatusOK, resp)
}

// TagsResponse is the body of GET /taglock/v1/repositories/{repo}/tags.
type TagsResponse struct {
	Repository string            `json:"repository"`
	Tags       []storage.Binding `json:"tags"` // one page, by tag; without manifest bytes, tombstones included
	// Next is the URL of the next page; "" on the last.
	Next string `json:"next,omitempty"`
}

func (h *Handler) tags(w http.ResponseWriter, r *http.Request) {
	repo, ok := strings.CutSuffix(r.PathValue("path"), "/tags")
	if !ok || repo == "" {
		h.fail(w, r, fmt.Errorf("%w: want %srepositories/REPO/tags", storage.ErrNotFound, Prefix))
		return
	}
	v := view.Of(h.viewer, r)
	if !v.Repo(repo) {
		h.fail(w, r, fmt.Errorf("repository %s: %w", repo, storage.ErrNotFound))
		return
	}
	n, last, err := pageParams(r, view.DefaultPage)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	bs, more, err := view.Visible(n, last, func(after string, limit int) ([]storage.Binding, error) {
		return h.local.BindingsAfter(r.Context(), repo, after, limit)
	}, func(b storage.Binding) string { return b.Tag }, func(b storage.Binding) bool { return v.Tag(repo, b.Tag) })
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if len(bs) == 0 && last == "" {
		h.fail(w, r, fmt.Errorf("repository %s: %w", repo, storage.ErrNotFound))
		return
	}
	resp := TagsResponse{Repository: repo, Tags: stripped(bs...)}
	if more {
		resp.Next = nextPage(w, r, r.URL.Path, n, bs[len(bs)-1].Tag)
	}
	writeJSON(w, http.StatusOK, resp)
}

// BindingResponse is the body of GET /taglock/v1/bindings/{repo}:{tag}.
type BindingResponse struct {
	Binding storage.Binding `json:"binding"` // without manifest bytes
	History []storage.Event `json:"history"` // newest first, one page
	// Next is the URL of the history's next page (under history); "" on
	// the last.
	Next string `json:"next,omitempty"`
}

// SplitRef splits "repo:tag" at the last colon after the last slash.
func SplitRef(ref string) (repo, tag string, ok bool) {
	i := strings.LastIndexByte(ref, ':')
	if i <= 0 || i == len(ref)-1 || strings.LastIndexByte(ref, '/') > i {
		return "", "", false
	}
	return ref[:i], ref[i+1:], true
}

func (h *Handler) binding(w http.ResponseWriter, r *http.Request) {
	repo, tag, ok := SplitRef(r.PathValue("ref"))
	if !ok {
		h.fail(w, r, fmt.Errorf("%w: want %sbindings/REPO:TAG", ErrInvalidRequest, Prefix))
		return
	}
	if !view.Of(h.viewer, r).Tag(repo, tag) {
		h.fail(w, r, fmt.Errorf("binding %s:%s: %w", repo, tag, storage.ErrNotFound))
		return
	}
	b, err := h.local.Binding(r.Context(), repo, tag)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	n, _, err := pageParams(r, view.DefaultPage, "limit")
	if err != nil {
		h.fail(w, r, err)
		return
	}
	hist, next, err := eventsPage(view.All{}, n, 0, func(before uint64, limit int) ([]storage.Event, error) {
		return h.local.HistoryBefore(r.Context(), repo, tag, before, limit)
	})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	resp := BindingResponse{Binding: stripped(b)[0], History: nonNil(hist)}
	if next > 0 {
		q := url.Values{"repo": {repo}, "tag": {tag}, "n": {strconv.Itoa(n)}, "last": {strconv.FormatUint(next, 10)}}
		resp.Next = Prefix + "history?" + q.Encode()
		w.Header().Set("Link", "<"+resp.Next+`>; rel="next"`)
	}
	writeJSON(w, http.StatusOK, resp)
}

// EventsResponse is the body of GET /taglock/v1/history and
// /taglock/v1/refusals.
type EventsResponse struct {
	Events []storage.Event `json:"events"` // newest first, one page
	// Next is the URL of the next page, of older events; "" on the last.
	Next string `json:"next,omitempty"`
}

func (h *Handler) history(w http.ResponseWriter, r *http.Request) {
	repo, tag := r.URL.Query().Get("repo"), r.URL.Query().Get("tag")
	if repo == "" {
		h.fail(w, r, fmt.Errorf("%w: history needs ?repo=", ErrInvalidRequest))
		return
	}
	v := view.Of(h.viewer, r)
	if !v.Repo(repo) || tag != "" && !v.Tag(repo, tag) {
		h.fail(w, r, fmt.Errorf("history of %s: %w", repo, storage.ErrNotFound))
		return
	}
	h.events(w, r, view.DefaultPage, func(before uint64, limit int) ([]storage.Event, error) {
		return h.local.HistoryBefore(r.Context(), repo, tag, before, limit)
	})
}

func (h *Handler) refusals(w http.ResponseWriter, r *http.Request) {
	// Up to n refusals: those the caller may not see are left out of the
	// newest n, not replaced by older ones.
	h.events(w, r, DefaultRefusals, func(before uint64, limit int) ([]storage.Event, error) {
		return h.local.RecentBefore(r.Context(), storage.EventRefused, before, limit)
	})
}

// events answers one page of an event list read with read.
func (h *Handler) events(w http.ResponseWriter, r *http.Request, def int, read func(before uint64, limit int) ([]storage.Event, error)) {
	n, last, err := pageParams(r, def, "limit")
	if err != nil {
		h.fail(w, r, err)
		return
	}
	before, err := seqParam(last)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	ev, next, err := eventsPage(view.Of(h.viewer, r), n, before, read)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	resp := EventsResponse{Events: nonNil(ev)}
	if next > 0 {
		resp.Next = nextPage(w, r, r.URL.Path, n, strconv.FormatUint(next, 10))
	}
	writeJSON(w, http.StatusOK, resp)
}

func nonNil(ev []storage.Event) []storage.Event {
	if ev == nil {
		return []storage.Event{}
	}
	return ev
}

// boolParam reads ?name=true or ?name=false; absent is false.
func boolParam(r *http.Request, name string) (bool, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, fmt.Errorf("%w: %s must be true or false, got %q", ErrInvalidRequest, name, s)
	}
	return b, nil
}

// decode reads a JSON request body strictly.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: body: %v", ErrInvalidRequest, err)
	}
	return nil
}

func (h *Handler) importTags(w http.ResponseWriter, r *http.Request) {
	var req ImportRequest
	if err := decode(r, &req); err != nil {
		h.fail(w, r, err)
		return
	}
	rep, err := h.local.RunImport(r.Context(), req)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

func (h *Handler) verify(w http.ResponseWriter, r *http.Request) {
	var req VerifyRequest
	if err := decode(r, &req); err != nil {
		h.fail(w, r, err)
		return
	}
	res, err := h.local.RunVerify(r.Context(), req)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// streamed writes a body produced by fn; a failure after the first byte
// aborts the connection, so the client sees a truncated body as an error
// rather than a short copy.
func (h *Handler) streamed(w http.ResponseWriter, r *http.Request, contentType string, fn func(io.Writer) error) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Cache-Control", "no-store")
	cw := &countingWriter{w: w}
	if err := fn(cw); err != nil {
		if cw.n == 0 {
			h.fail(w, r, err)
			return
		}
		h.log.Error().Err(err).Str("path", r.URL.Path).Int64("written", cw.n).Msg("admin stream failed; aborting")
		panic(http.ErrAbortHandler)
	}
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func (h *Handler) backup(w http.ResponseWriter, r *http.Request) {
	h.streamed(w, r, "application/octet-stream", func(cw io.Writer) error {
		_, err := h.local.Backup(r.Context(), cw)
		return err
	})
}

func (h *Handler) export(w http.ResponseWriter, r *http.Request) {
	h.streamed(w, r, "application/x-ndjson", func(cw io.Writer) error {
		return h.local.Export(r.Context(), cw)
	})
}

func (h *Handler) importLedger(w http.ResponseWriter, r *http.Request) {
	force, err := boolParam(r, "force")
	if err != nil {
		h.fail(w, r, err)
		return
	}
	stats, err := h.local.Import(r.Context(), r.Body, storage.ImportOptions{Force: force})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, stats)
}

// CheckResponse is the body of POST /taglock/v1/admin/ledger/check.
type CheckResponse struct {
	Problems []string `json:"problems"` // empty when the ledger is sound
}

func (h *Handler) check(w http.ResponseWriter, r *http.Request) {
	problems, err := h.local.Check(r.Context())
	if err != nil && !(errors.Is(err, storage.ErrCorrupt) && len(problems) > 0) {
		h.fail(w, r, err)
		return
	}
	if problems == nil {
		problems = []string{}
	}
	writeJSON(w, http.StatusOK, CheckResponse{Problems: problems})
}
