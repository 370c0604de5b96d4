package integration

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/taglock/taglock/storage"
)

// This file drives taglock with a raw TCP client, byte for byte, to check
// that hostile and malformed requests are answered by taglock (or by Go's
// HTTP server in front of it) without anything reaching the registry and
// without anything changing. The requests themselves are in
// hostile_cases_test.go.

// answer is one response a hostile request must get.
type answer struct {
	status int
	// code is the OCI error code of the {"errors":[...]} body; empty when
	// net/http answers by itself, with a plain-text body.
	code string
	// says is a substring the body must contain.
	says string
}

// hostileCase is one hostile exchange on a fresh connection.
type hostileCase struct {
	name string
	// raw is written to the connection at once. Every exchange ends with a
	// request carrying Connection: close, or with one net/http refuses, so
	// the server closes the connection when it is done.
	raw func(f hostileFixture) string
	// send, when set, writes the request instead of raw, paced as it likes.
	send func(conn net.Conn, f hostileFixture) error
	// want lists the responses in order; none means the client hangs up
	// and reads nothing.
	want []answer
}

// hostileFixture is what the hostile requests aim at.
type hostileFixture struct {
	// v1 is team/app:v1, an immutable tag.
	v1 Manifest
	// other is a second image stored in team/app by digest only: pushing
	// it to v1 would move the tag.
	other Manifest
	// upstream is the upstream's host:port in Separate mode, a made-up
	// host in Embedded mode.
	upstream string
}

// TestHostileRequestsChangeNothing ensures that every exchange in the
// catalogue of hostile requests (request smuggling, absolute-form targets
// and Host games, path parameters and odd bytes, query keys that repeat or
// change case, oversize and slow requests) gets exactly the listed
// responses, that none of them makes taglock send anything to the registry,
// and that afterwards the ledger's records and the registry's tags are as
// they were. Refusals may add "refused" events to the ledger's history;
// nothing else may.
func TestHostileRequestsChangeNothing(t *testing.T) {
	t.Parallel()
	cases := hostileCases()
	if len(cases) < 60 {
		t.Fatalf("the catalogue has %d hostile requests, want at least 60", len(cases))
	}
	seen := map[string]bool{}
	for _, c := range cases {
		if seen[c.name] {
			t.Fatalf("two hostile requests are called %q", c.name)
		}
		seen[c.name] = true
	}
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m)
		f := mustHostileFixture(t, e)
		for _, c := range cases {
			beforeState := e.state(t) // in Embedded mode this asks through taglock
			before := e.forwards(t)
			got := exchange(t, e.Addr, c, f)
			if after := e.forwards(t); after != before {
				t.Errorf("%s: taglock sent %s to the registry, want nothing", c.name, after.minus(before))
			}
			checkAnswers(t, c, got)
			if afterState := e.state(t); afterState.records != beforeState.records || afterState.tags != beforeState.tags {
				t.Errorf("%s changed what is stored:\nledger before:\n%s\nledger after:\n%s\nregistry before:\n%s\nregistry after:\n%s",
					c.name, beforeState.records, afterState.records, beforeState.tags, afterState.tags)
			} else if extra := afterState.events[len(beforeState.events):]; slices.ContainsFunc(extra, func(ev storage.Event) bool {
				return ev.Kind != storage.EventRefused
			}) {
				t.Errorf("%s recorded events %+v; only refusals may be recorded", c.name, extra)
			}
		}
	})
}

// mustHostileFixture pushes team/app:v1 and stores a second image by digest.
func mustHostileFixture(t *testing.T, e *Env) hostileFixture {
	t.Helper()
	v1, other := MustImage(t), MustImage(t)
	MustPush(t, e.Addr, "team/app:v1", v1)
	MustPushByDigest(t, e.Addr, "team/app", other)
	f := hostileFixture{v1: MustManifest(t, v1), other: MustManifest(t, other), upstream: "registry.example:443"}
	if e.Up != nil {
		f.upstream = e.Up.Addr
	}
	return f
}

// response is one response read off a hostile exchange.
type response struct {
	status int
	body   []byte
}

// exchange sends c on a fresh connection and reads responses until the
// server closes it. Interim 1xx responses are skipped.
func exchange(t *testing.T, addr string, c hostileCase, f hostileFixture) []response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("%s: dial: %v", c.name, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	sent := make(chan error, 1)
	go func() {
		// Written in the background: the server may answer (and hang
		// up) before it has read everything.
		if c.send != nil {
			sent <- c.send(conn, f)
			return
		}
		_, err := io.WriteString(conn, c.raw(f))
		sent <- err
	}()
	if len(c.want) == 0 {
		if err := <-sent; err != nil {
			t.Fatalf("%s: send: %v", c.name, err)
		}
		return nil
	}
	return readResponses(t, c.name, conn)
}

// readResponses reads responses from conn until the server hangs up,
// skipping interim 1xx responses. At least one must come.
func readResponses(t *testing.T, name string, conn net.Conn) []response {
	t.Helper()
	var out []response
	br := bufio.NewReader(conn)
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			if len(out) == 0 || !isHangUp(err) {
				t.Fatalf("%s: read response %d: %v", name, len(out)+1, err)
			}
			return out
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("%s: read body of response %d: %v", name, len(out)+1, err)
		}
		if resp.StatusCode/100 == 1 {
			continue
		}
		out = append(out, response{resp.StatusCode, body})
	}
}

// isHangUp reports whether err is the server closing the connection.
func isHangUp(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}

// checkAnswers compares what came back with what c wants.
func checkAnswers(t *testing.T, c hostileCase, got []response) {
	t.Helper()
	if len(got) != len(c.want) {
		t.Errorf("%s: got %d responses %s, want %d", c.name, len(got), describe(got), len(c.want))
		return
	}
	for i, w := range c.want {
		g := got[i]
		if g.status != w.status {
			t.Errorf("%s: response %d is %d %.300s, want %d %s", c.name, i+1, g.status, g.body, w.status, w.code)
			continue
		}
		if w.code != "" {
			var doc struct {
				Errors []struct{ Code, Message string } `json:"errors"`
			}
			if err := json.Unmarshal(g.body, &doc); err != nil || len(doc.Errors) == 0 {
				t.Errorf("%s: response %d body is not an OCI error: %.300q", c.name, i+1, g.body)
				continue
			}
			if doc.Errors[0].Code != w.code {
				t.Errorf("%s: response %d code %s (%s), want %s", c.name, i+1, doc.Errors[0].Code, doc.Errors[0].Message, w.code)
			}
		}
		if !bytes.Contains(g.body, []byte(w.says)) {
			t.Errorf("%s: response %d body %.300q does not say %q", c.name, i+1, g.body, w.says)
		}
	}
}

func describe(rs []response) string {
	var parts []string
	for _, r := range rs {
		parts = append(parts, fmt.Sprintf("%d %.120q", r.status, r.body))
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// forwardCount is what taglock has sent to its registry: the requests its
// metrics count (forwarded client requests and taglock's own lookups and
// writes, in both modes), and the requests a separate upstream counted.
type forwardCount struct {
	metered, upstream int64
}

func (c forwardCount) minus(d forwardCount) string {
	return fmt.Sprintf("%d requests (%d counted by taglock's metrics, %d by the upstream)",
		max(c.metered-d.metered, c.upstream-d.upstream), c.metered-d.metered, c.upstream-d.upstream)
}

// forwards counts what taglock has sent to its registry so far.
func (e *Env) forwards(t *testing.T) forwardCount {
	t.Helper()
	var c forwardCount
	c.metered = int64(scrapeSum(t, e.Addr, "taglock_upstream_duration_seconds_count"))
	if e.Up != nil {
		c.upstream = e.Up.Requests()
	}
	return c
}

// scrapeSum adds up every sample of metric on taglock's /metrics.
func scrapeSum(t *testing.T, addr, metric string) float64 {
	t.Helper()
	resp, body := do(t, http.MethodGet, "http://"+addr+"/metrics", nil, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d", resp.StatusCode)
	}
	var sum float64
	for line := range strings.SplitSeq(string(body), "\n") {
		name, rest, ok := strings.Cut(line, " ")
		if !ok || (name != metric && !strings.HasPrefix(name, metric+"{")) {
			continue
		}
		if i := strings.LastIndexByte(name, '}'); i >= 0 {
			_, rest, _ = strings.Cut(line[i:], " ")
		}
		v, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}

// storedState is what a hostile request must not change.
type storedState struct {
	// records is the ledger's export without its history.
	records string
	// events is the ledger's history, oldest first.
	events []storage.Event
	// tags lists every repository:tag the registry holds and its digest.
	tags string
}

// state reads the ledger and the registry. In Embedded mode the registry is
// read through taglock, so call it after counting forwards.
func (e *Env) state(t *testing.T) storedState {
	t.Helper()
	var s storedState
	var export bytes.Buffer
	if err := e.Ledger().Export(t.Context(), &export); err != nil {
		t.Fatalf("export ledger: %v", err)
	}
	for line := range strings.SplitSeq(export.String(), "\n") {
		if !strings.HasPrefix(line, `{"type":"event"`) {
			s.records += line + "\n"
		}
	}
	evs, err := e.Ledger().Recent(t.Context(), "", 0)
	if err != nil {
		t.Fatalf("ledger history: %v", err)
	}
	slices.SortFunc(evs, func(a, b storage.Event) int { return cmp.Compare(a.Seq, b.Seq) })
	s.events = evs

	reg := e.Addr
	if e.Up != nil {
		reg = e.Up.Addr
	}
	var catalog struct{ Repositories []string }
	getJSON(t, "http://"+reg+"/v2/_catalog", &catalog)
	var b strings.Builder
	for _, repo := range catalog.Repositories {
		var list struct{ Tags []string }
		getJSON(t, "http://"+reg+"/v2/"+repo+"/tags/list", &list)
		slices.Sort(list.Tags)
		for _, tag := range list.Tags {
			fmt.Fprintf(&b, "%s:%s %s\n", repo, tag, mustServed(t, reg, repo+":"+tag))
		}
	}
	s.tags = b.String()
	return s
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, body := do(t, http.MethodGet, url, nil, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}
