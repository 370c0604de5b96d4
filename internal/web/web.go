// Package web is taglock's read-only web page at /taglock/: the
// repositories the ledger records, each repository's tags with their
// digests, mode and first push, each tag's history, and recent refusals.
// Lists come in pages (?last= names the entry a page starts after), so no
// page grows with the ledger.
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
	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// Prefix is where the page is mounted.
const Prefix = "/taglock/"

// RecentRefusals is how many refusals the front page lists.
const RecentRefusals = 25

// HistoryLimit is how many events a repository or tag page lists.
const HistoryLimit = 200

// ReposPerPage is how many repositories the front page lists, and
// TagsPerPage how many tags a repository page lists.
const (
	ReposPerPage = 50
	TagsPerPage  = 100
)

// CountLimit is how many of a repository's tags the front page reads to
// count those a caller who may not see every tag sees; past it, the count
// shows as "N+".
const CountLimit = 500

// Ledger is what the page reads. Counts of the whole ledger should be
// cheap: serve puts a cache in front of a backend that reads every binding
// to count them.
type Ledger interface {
	RepositoriesAfter(ctx context.Context, after string, limit int) ([]string, error)
	BindingsAfter(ctx context.Context, repo, after string, limit int) ([]storage.Binding, error)
	Counts(ctx context.Context, repo string) (storage.Counts, error)
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

// repoSummary is one row of the front page: the live tags of a
// repository the caller sees, and how many of them are immutable. More is
// set when the count stopped at CountLimit tags.
type repoSummary struct {
	Name      string
	Tags      int64
	Immutable int64
	More      bool
}

// nextURL is the URL of the page of path that starts after last.
func nextURL(path, last string) string {
	return path + "?" + url.Values{"last": {last}}.Encode()
}

func (h *Handler) index(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	v := view.Of(h.viewer, r)
	_, all := v.(view.All)
	last := r.URL.Query().Get("last")
	repos, more, err := view.Visible(ReposPerPage, last, func(after string, limit int) ([]string, error) {
		return h.ledger.RepositoriesAfter(ctx, after, limit)
	}, func(repo string) string { return repo }, v.Repo)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	data := struct {
		page
		Repos    []repoSummary
		Total    *storage.Counts // the whole ledger's, for a caller who sees all of it
		First    string          // the first page's URL, on the pages after it
		Next     string
		Refusals []storage.Event
	}{page: page{Title: "Repositories", Base: Prefix}}
	if all {
		total, err := h.ledger.Counts(ctx, "")
		if err != nil {
			h.fail(w, r, err)
			return
		}
		data.Total = &total
	}
	for _, repo := range repos {
		s, err := h.summary(ctx, v, all, repo)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		data.Repos = append(data.Repos, s)
	}
	if more {
		data.Next = nextURL(Prefix, repos[len(repos)-1])
	}
	if last != "" {
		data.First = Prefix
	}
	if data.Refusals, err = h.ledger.Recent(ctx, storage.EventRefused, RecentRefusals); err != nil {
		h.fail(w, r, err)
		return
	}
	data.Refusals = view.Events(v, data.Refusals)
	h.render(w, r, "index", data)
}

// summary counts the live tags of repo that v sees: from the ledger's
// counts when v sees everything, otherwise among its first CountLimit
// tags.
func (h *Handler) summary(ctx context.Context, v view.Viewer, all bool, repo string) (repoSummary, error) {
	s := repoSummary{Name: repo}
	if all {
		c, err := h.ledger.Counts(ctx, repo)
		s.Tags, s.Immutable = c.Live(), c.Immutable
		return s, err
	}
	bs, err := h.ledger.BindingsAfter(ctx, repo, "", CountLimit+1)
	if err != nil {
		return s, err
	}
	if len(bs) > CountLimit {
		bs, s.More = bs[:CountLimit], true
	}
	for _, b := range bs {
		if b.Deleted || !v.Tag(repo, b.Tag) {
			continue
		}
		s.Tags++
		if b.Mode == policy.Immutable {
			s.Immutable++
		}
	}
	return s, nil
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
	last := r.URL.Query().Get("last")
	bs, more, err := view.Visible(TagsPerPage, last, func(after string, limit int) ([]storage.Binding, error) {
		return h.ledger.BindingsAfter(ctx, path, after, limit)
	}, func(b storage.Binding) string { return b.Tag }, func(b storage.Binding) bool { return v.Tag(path, b.Tag) })
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if len(bs) == 0 && last == "" {
		h.fail(w, r, storage.ErrNotFound)
		return
	}
	data := struct {
		page
		Repo     string
		Total    *storage.Counts // the repository's, for a caller who sees all of it
		Bindings []storage.Binding
		First    string
		Next     string
		History  []storage.Event
	}{page: page{Title: path, Base: Prefix}, Repo: path, Bindings: bs}
	if _, all := v.(view.All); all {
		c, err := h.ledger.Counts(ctx, path)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		data.Total = &c
	}
	if more {
		data.Next = nextURL(repoURL(path), bs[len(bs)-1].Tag)
	}
	if last != "" {
		data.First = repoURL(path)
	}
	if data.History, err = h.ledger.History(ctx, path, "", HistoryLimit); err != nil {
		h.fail(w, r, err)
		return
	}
	data.History = view.Events(v, data.History)
	h.render(w, r, "repo", data)
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
