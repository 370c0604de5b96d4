package server

import (
	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/admin"
	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/proxy"
)

// insight holds what serve adds on top of the proxy to show what happens:
// the audit file (log.audit) and the scheduled verify (verify.schedule).
type insight struct {
	cfg    config.Config
	log    zerolog.Logger
	audit  zerolog.Logger
	file   *auditLog
	verify *verifier
}

// newInsight opens the audit file, if one is configured.
func newInsight(cfg config.Config, log zerolog.Logger) (*insight, error) {
	in := &insight{cfg: cfg, log: log}
	var err error
	in.audit, in.file, err = openAudit(cfg.Log.Audit, log)
	if err != nil {
		return nil, err
	}
	return in, nil
}

// auditLogger is the logger for proxy.Options.Audit.
func (in *insight) auditLogger() *zerolog.Logger { return &in.audit }

// start begins the scheduled verify, if one is configured. It runs on the
// replica that runs the jobs (j).
func (in *insight) start(tools *proxy.Drift, metrics *proxy.Metrics, j jobs) {
	if in.cfg.Verify.Schedule <= 0 {
		return
	}
	in.verify = &verifier{tools: tools, metrics: metrics, audit: in.audit, log: in.log, every: in.cfg.Verify.Schedule.Std(), jobs: j}
	in.verify.start()
}

// drift is the scheduled verify's state for the JSON API.
func (in *insight) drift() admin.DriftStatus {
	if in == nil || in.verify == nil {
		return admin.DriftStatus{}
	}
	return admin.DriftStatus{Schedule: in.verify.every.String(), Last: in.verify.Last()}
}

// close stops the scheduled verify and closes the audit file.
func (in *insight) close() {
	if in == nil {
		return
	}
	in.verify.stop()
	_ = in.file.Close()
}
