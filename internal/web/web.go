// Package web is taglock's read-only web page at /taglock/: the
// repositories the ledger records, each repository's tags with their
// digests, mode and first push, each tag's history, and recent refusals.
//
// It is server-rendered HTML from html/template with the templates and the
// style sheet embedded in the binary; there is no JavaScript and no build
// step. It only reads the ledger: it must not write it, nor touch the
// registry API under /v2/.
package web

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/view"
	"github.com/taglock/taglock/storage"
)

// Prefix is where the page is mounted.
const Prefix = "/taglock/"

// RecentRefusals is how many refusals the front page lists.
const RecentRefusals = 25

// HistoryLimit is how many events a repository or tag page lists.
const HistoryLimit = 200

// Ledger is what the page reads.
type Ledger interface {
	Repositories(ctx context.Context) ([]string, error)
	Bindings(ctx context.Context, repo string) ([]storage.Binding, error)
	Binding(ctx context.Context, repo, tag string) (storage.Binding, error)
	History(ctx context.Context, repo, tag string, limit int) ([]storage.Event, error)
	Recent(ctx context.Context, kind storage.EventKind, limit int) ([]storage.Event, error)
}

var _ Ledger = storage.Ledger(nil)

// Options configures New.
type Options struct {
	// Ledger is the open ledger. Required.
	Ledger Ledger
	// Log receives one line per failed page. Default zerolog.Nop().
	Log zerolog.Logger
	// Viewer returns what the caller may see: repositories, tags, history
	// and refusals it may not see are left out, and their pages are 404.
	// nil, or a nil Viewer, shows everything.
	Viewer func(*http.Request) view.Viewer
}

//go:embed assets
var assets embed.FS

// Handler serves the page under Prefix.
type Handler struct {
	ledger Ledger
	log    zerolog.Logger
	viewer func(*http.Request) view.Viewer
	pages  map[string]*template.Template
	mux    *http.ServeMux
}

// New returns the page's handler. Mount it at Prefix.
func New(o Options) *Handler {
	h := &Handler{ledger: o.Ledger, log: o.Log, viewer: o.Viewer, pages: map[string]*template.Template{}, mux: http.NewServeMux()}
	funcs := template.FuncMap{
		"stamp":   stamp,
		"short":   short,
		"repoURL": repoURL,
		"tagURL":  tagURL,
	}
	for _, page := range []string{"index", "repo", "tag"} {
		h.pages[page] = template.Must(template.New(page).Funcs(funcs).ParseFS(assets, "assets/layout.html", "assets/"+page+".html"))
	}
	static, _ := fs.Sub(assets, "assets")
	h.mux.HandleFunc("GET "+Prefix+"{$}", h.index)
	h.mux.HandleFunc("GET "+Prefix+"repos/{path...}", h.repoOrTag)
	h.mux.Handle("GET "+Prefix+"static/style.css", http.StripPrefix(Prefix+"static/", http.FileServerFS(static)))
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// page is what every template gets: a title, the mount point and the
// page's own data.
type page struct {
	Title string
	Base  string
}

// repoSummary is one row of the front page.
type repoSummary struct {
	Name      string
	Tags      int
	Immutable int
}

func (h *Handler) index(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	v := view.Of(h.viewer, r)
	repos, err := h.ledger.Repositories(ctx)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	repos = view.Repos(v, repos)
	data := struct {
		page
		Repos    []repoSummary
		Tags     int
		Refusals []storage.Event
	}{page: page{Title: "Repositories", Base: Prefix}}
	for _, repo := range repos {
		bs, err := h.ledger.Bindings(ctx, repo)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		s := repoSummary{Name: repo}
		for _, b := range bs {
			if b.Deleted || !v.Tag(repo, b.Tag) {
				continue
			}
			s.Tags++
			if b.Mode == storage.ModeImmutable {
				s.Immutable++
			}
		}
		data.Tags += s.Tags
		data.Repos = append(data.Repos, s)
	}
	if data.Refusals, err = h.ledger.Recent(ctx, storage.EventRefused, RecentRefusals); err != nil {
		h.fail(w, r, err)
		return
	}
	data.Refusals = view.Events(v, data.Refusals)
	h.render(w, r, "index", data)
}

// repoOrTag serves repos/REPO (a repository) and repos/REPO:TAG (a tag).
func (h *Handler) repoOrTag(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	v := view.Of(h.viewer, r)
	path := r.PathValue("path")
	if repo, tag, ok := splitRef(path); ok {
		if !v.Tag(repo, tag) {
			h.fail(w, r, storage.ErrNotFound)
			return
		}
		b, err := h.ledger.Binding(ctx, repo, tag)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		b.Manifest = nil
		hist, err := h.ledger.History(ctx, repo, tag, HistoryLimit)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		h.render(w, r, "tag", struct {
			page
			Binding storage.Binding
			History []storage.Event
		}{page{Title: repo + ":" + tag, Base: Prefix}, b, hist})
		return
	}
	if !v.Repo(path) {
		h.fail(w, r, storage.ErrNotFound)
		return
	}
	bs, err := h.ledger.Bindings(ctx, path)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	bs = view.Bindings(v, path, bs)
	if len(bs) == 0 {
		h.fail(w, r, storage.ErrNotFound)
		return
	}
	hist, err := h.ledger.History(ctx, path, "", HistoryLimit)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	hist = view.Events(v, hist)
	h.render(w, r, "repo", struct {
		page
		Repo     string
		Bindings []storage.Binding
		History  []storage.Event
	}{page{Title: path, Base: Prefix}, path, bs, hist})
}

// render executes a page into a buffer first, so a template error becomes
// a clean 500 rather than half a page.
func (h *Handler) render(w http.ResponseWriter, r *http.Request, name string, data any) {
	var buf bytes.Buffer
	if err := h.pages[name].ExecuteTemplate(&buf, "layout", data); err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = buf.WriteTo(w)
}

func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, storage.ErrNotFound) {
		http.Error(w, "not in the ledger", http.StatusNotFound)
		return
	}
	h.log.Error().Err(err).Str("path", r.URL.Path).Msg("web page")
	http.Error(w, "the ledger could not be read", http.StatusServiceUnavailable)
}

// splitRef splits "repo:tag" at a colon after the last slash.
func splitRef(ref string) (repo, tag string, ok bool) {
	i := strings.LastIndexByte(ref, ':')
	if i <= 0 || i == len(ref)-1 || strings.LastIndexByte(ref, '/') > i {
		return "", "", false
	}
	return ref[:i], ref[i+1:], true
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

// short abbreviates a digest to its algorithm and 12 hex characters.
func short(d digest.Digest) string {
	if d == "" {
		return "-"
	}
	s := d.String()
	if i := strings.IndexByte(s, ':'); i >= 0 && len(s) > i+13 {
		return s[:i+13]
	}
	return s
}

func repoURL(repo string) string { return Prefix + "repos/" + escapePath(repo) }

func tagURL(repo, tag string) string {
	return Prefix + "repos/" + escapePath(repo) + ":" + url.PathEscape(tag)
}

// escapePath escapes each segment of a repository name, keeping slashes.
func escapePath(p string) string {
	parts := strings.Split(p, "/")
	for i, s := range parts {
		parts[i] = url.PathEscape(s)
	}
	return strings.Join(parts, "/")
}
