package admin

import (
	"net/http"
	"slices"

	"github.com/taglock/taglock/storage"
)

// Viewer is what one caller of the read routes may see. serve gives callers
// that authenticated from another host the view their pull rights allow;
// the taglock commands on the server's host see everything.
type Viewer interface {
	// Repo reports whether the caller may see repository repo at all.
	Repo(repo string) bool
	// Tag reports whether the caller may see repo:tag.
	Tag(repo, tag string) bool
}

// everything is the view of a caller with no Viewer.
type everything struct{}

func (everything) Repo(string) bool        { return true }
func (everything) Tag(string, string) bool { return true }

// view returns r's Viewer.
func (h *Handler) view(r *http.Request) Viewer {
	if h.viewer != nil {
		if v := h.viewer(r); v != nil {
			return v
		}
	}
	return everything{}
}

// seesEvent reports whether v may see e: by its tag, or by its repository
// for an event about the repository as a whole.
func seesEvent(v Viewer, e storage.Event) bool {
	if e.Tag == "" {
		return v.Repo(e.Repo)
	}
	return v.Tag(e.Repo, e.Tag)
}

func visibleEvents(v Viewer, ev []storage.Event) []storage.Event {
	return slices.DeleteFunc(ev, func(e storage.Event) bool { return !seesEvent(v, e) })
}
