package view

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"

	"github.com/taglock/taglock/storage"
)

// teamOnly sees team/app, except its tag "secret".
type teamOnly struct{}

func (teamOnly) Repo(repo string) bool     { return repo == "team/app" }
func (teamOnly) Tag(repo, tag string) bool { return repo == "team/app" && tag != "secret" }

// A Viewer filters repositories, tags and events; events about a whole
// repository are judged by the repository, the others by their tag; nil
// sees everything.
func TestFilters(t *testing.T) {
	t.Parallel()
	v := teamOnly{}
	if got := Repos(v, []string{"team/app", "other/db"}); !slices.Equal(got, []string{"team/app"}) {
		t.Errorf("Repos = %v", got)
	}
	bs := Bindings(v, "team/app", []storage.Binding{{Tag: "1.0"}, {Tag: "secret"}})
	if len(bs) != 1 || bs[0].Tag != "1.0" {
		t.Errorf("Bindings = %+v", bs)
	}
	ev := Events(v, []storage.Event{
		{Repo: "team/app", Tag: "1.0"}, {Repo: "team/app", Tag: "secret"},
		{Repo: "team/app"}, {Repo: "other/db"}, {Repo: "other/db", Tag: "1.0"},
	})
	if len(ev) != 2 || ev[0].Tag != "1.0" || ev[1].Tag != "" || ev[1].Repo != "team/app" {
		t.Errorf("Events = %+v", ev)
	}
	r := httptest.NewRequest(http.MethodGet, "/taglock/", nil)
	for _, f := range []func(*http.Request) Viewer{nil, func(*http.Request) Viewer { return nil }} {
		if all := Of(f, r); !all.Repo("x") || !all.Tag("x", "y") {
			t.Error("Of without a Viewer hides something")
		}
	}
	if Of(func(*http.Request) Viewer { return v }, r) != Viewer(v) {
		t.Error("Of does not return the caller's Viewer")
	}
}
