// Package view decides which parts of the ledger one caller of the ledger
// API and web page sees. With authentication on, serve gives every caller
// on its TCP listener a Viewer built from its pull rights; the API and the
// page leave out whatever it hides.
package view

import (
	"net/http"
	"slices"

	"github.com/taglock/taglock/storage"
)

// Viewer is what one caller may see.
type Viewer interface {
	// Repo reports whether the caller may see repository repo at all.
	Repo(repo string) bool
	// Tag reports whether the caller may see repo:tag.
	Tag(repo, tag string) bool
}

// All sees everything: the view of the admin socket's callers and of every
// caller while authentication is off.
type All struct{}

// Repo implements Viewer.
func (All) Repo(string) bool { return true }

// Tag implements Viewer.
func (All) Tag(string, string) bool { return true }

// Of returns the Viewer viewer gives r's caller: All when viewer, or what
// it returns, is nil.
func Of(viewer func(*http.Request) Viewer, r *http.Request) Viewer {
	if viewer == nil {
		return All{}
	}
	if v := viewer(r); v != nil {
		return v
	}
	return All{}
}

// Event reports whether v may see e: by its tag, or by its repository for
// an event about the repository as a whole.
func Event(v Viewer, e storage.Event) bool {
	if e.Tag == "" {
		return v.Repo(e.Repo)
	}
	return v.Tag(e.Repo, e.Tag)
}

// Events removes from ev, in place, the events v may not see.
func Events(v Viewer, ev []storage.Event) []storage.Event {
	return slices.DeleteFunc(ev, func(e storage.Event) bool { return !Event(v, e) })
}

// Repos removes from repos, in place, the repositories v may not see.
func Repos(v Viewer, repos []string) []string {
	return slices.DeleteFunc(repos, func(r string) bool { return !v.Repo(r) })
}

// Bindings removes from bs, in place, the tags of repo v may not see.
func Bindings(v Viewer, repo string, bs []storage.Binding) []storage.Binding {
	return slices.DeleteFunc(bs, func(b storage.Binding) bool { return !v.Tag(repo, b.Tag) })
}
