package proxy

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// TestRemoteUnreachableAnswersOCIError ensures a request streamed to an
// upstream that cannot be reached gets a 502 with the spec's error body,
// and that the failure is logged once through the injected logger.
func TestRemoteUnreachableAnswersOCIError(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there any more
	var logs bytes.Buffer
	up := NewRemote(&url.URL{Scheme: "http", Host: addr}, http.DefaultTransport, zerolog.New(&logs))
	w := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodGet, "/v2/team/app/blobs/sha256:"+strings.Repeat("a", 64), nil)
	up.Forward(w, r)
	if w.Code != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", w.Code)
	}
	var body struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || len(body.Errors) != 1 || body.Errors[0].Code != "UNAVAILABLE" {
		t.Errorf("body %q, want one OCI error with code UNAVAILABLE", w.Body.String())
	}
	if got := strings.Count(logs.String(), "\n"); got != 1 || !strings.Contains(logs.String(), `"level":"error"`) {
		t.Errorf("logged %q, want one error line", logs.String())
	}
}
