package server

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestLedgerGate ensures that with authentication on the ledger API and web
// page answer only loopback peers, and with it off everyone, as before.
func TestLedgerGate(t *testing.T) {
	t.Parallel()
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	tests := []struct {
		authOn bool
		peer   string
		want   int
	}{
		{true, "127.0.0.1:4000", http.StatusOK},
		{true, "[::1]:4000", http.StatusOK},
		{true, "10.1.2.3:4000", http.StatusForbidden},
		{true, "garbage", http.StatusForbidden},
		{false, "10.1.2.3:4000", http.StatusOK},
	}
	for _, tc := range tests {
		r := httptest.NewRequest(http.MethodGet, "/taglock/v1/repositories", nil)
		r.RemoteAddr = tc.peer
		w := httptest.NewRecorder()
		ledgerGate(tc.authOn, ok).ServeHTTP(w, r)
		if w.Code != tc.want {
			t.Errorf("auth on %v, peer %s: %d, want %d", tc.authOn, tc.peer, w.Code, tc.want)
		}
	}
}
