package admin

import (
	"net/http"
	"slices"
	"time"

	"github.com/taglock/taglock/internal/view"
	"github.com/taglock/taglock/proxy"
)

// DriftRun is the outcome of one scheduled verify.
type DriftRun struct {
	// Time is when the run ended.
	Time time.Time `json:"time"`
	// Report is what it found; empty when Error is set.
	Report proxy.VerifyReport `json:"report"`
	// Error says why the run failed, if it did.
	Error string `json:"error,omitempty"`
}

// DriftStatus is the body of GET /taglock/v1/drift: what serve's scheduled
// verify last found.
type DriftStatus struct {
	// Schedule is verify.schedule, such as "6h0m0s"; "" when serve does
	// not verify on a schedule.
	Schedule string `json:"schedule,omitempty"`
	// Last is the latest run; nil before the first run ends or without a
	// schedule.
	Last *DriftRun `json:"last,omitempty"`
}

// mountDrift serves GET drift from status; nil answers that no scheduled
// verify runs.
func (h *Handler) mountDrift(status func() DriftStatus) {
	h.mux.HandleFunc("GET "+Prefix+"drift", func(w http.ResponseWriter, r *http.Request) {
		st := DriftStatus{}
		if status != nil {
			st = status()
		}
		if st.Last != nil {
			v := view.Of(h.viewer, r)
			last := *st.Last
			last.Report.Findings = slices.DeleteFunc(slices.Clone(last.Report.Findings), func(f proxy.Finding) bool { return !v.Tag(f.Repo, f.Tag) })
			st.Last = &last
		}
		writeJSON(w, http.StatusOK, st)
	})
}
