package admin

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/taglock/taglock/internal/view"
	"github.com/taglock/taglock/storage"
)

// Every list the read API answers is a page of at most view.MaxPage
// entries: repositories and a repository's tags by name, history and
// refusals newest first. ?n= asks for a page size (view.DefaultPage, 100,
// when absent; refusals DefaultRefusals) and ?last= starts after an entry:
// a name, or for events a sequence number. When more follow, the answer's
// "next" field and its Link header (rel="next") hold the URL of the next
// page, as the distribution spec's tag list does.

// pageParams reads ?n= (or, for the event lists, its older spelling
// ?limit=) and ?last=. n is def when absent or 0, and at most
// view.MaxPage.
func pageParams(r *http.Request, def int, names ...string) (n int, last string, err error) {
	q := r.URL.Query()
	for _, name := range append([]string{"n"}, names...) {
		s := q.Get(name)
		if s == "" {
			continue
		}
		v, err := strconv.Atoi(s)
		if err != nil || v < 0 {
			return 0, "", fmt.Errorf("%w: %s must be a non-negative integer, got %q", ErrInvalidRequest, name, s)
		}
		n = v
		break
	}
	if n == 0 {
		n = def
	}
	return min(n, view.MaxPage), q.Get("last"), nil
}

// seqParam reads ?last= of an event list: the sequence number of the last
// event of the page before; 0 when absent.
func seqParam(last string) (uint64, error) {
	if last == "" {
		return 0, nil
	}
	seq, err := strconv.ParseUint(last, 10, 64)
	if err != nil || seq == 0 {
		return 0, fmt.Errorf("%w: last must be an event's sequence number, got %q", ErrInvalidRequest, last)
	}
	return seq, nil
}

// nextPage returns the URL of the page after the one r asked for, which
// ends at last, and sets it as w's Link header. Other query parameters
// stay; ?limit= becomes ?n=.
func nextPage(w http.ResponseWriter, r *http.Request, path string, n int, last string) string {
	q := r.URL.Query()
	q.Del("limit")
	q.Set("n", strconv.Itoa(n))
	q.Set("last", last)
	next := (&url.URL{Path: path, RawQuery: q.Encode()}).String()
	w.Header().Set("Link", "<"+next+`>; rel="next"`)
	return next
}

// eventsPage reads one page of n events before seq before with read, and
// leaves out those v may not see: a page holds what the caller sees of n
// events, so it may be shorter than n, and next (0 when none) is the
// sequence number to read on from.
func eventsPage(v view.Viewer, n int, before uint64, read func(before uint64, limit int) ([]storage.Event, error)) (page []storage.Event, next uint64, err error) {
	ev, err := read(before, n+1)
	if err != nil {
		return nil, 0, err
	}
	if len(ev) > n {
		ev, next = ev[:n], ev[n-1].Seq
	}
	return view.Events(v, ev), next, nil
}
