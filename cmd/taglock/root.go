package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/internal/server"
)

// globals are the flags every subcommand shares.
type globals struct {
	configPath string
	data       string // --data of the ledger commands; "" keeps the config's
}

// dataFlag adds --data, which overrides the config's data directory, to a
// command that reaches the ledger (and, through it, serve's admin socket),
// and with persistent to its subcommands.
func (g *globals) dataFlag(cmd *cobra.Command, persistent bool) {
	fs := cmd.Flags()
	if persistent {
		fs = cmd.PersistentFlags()
	}
	fs.StringVar(&g.data, "data", "", "data directory holding the ledger and serve's admin socket (default: data in --config)")
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "taglock",
		Short:         "An OCI registry proxy that makes tags immutable",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVarP(&g.configPath, "config", "c", "", "configuration file (YAML); built-in defaults when omitted")
	root.AddCommand(newServe(g), newConfigCmd(g), newVersion(), newPromote(g),
		newImportCmd(g), newVerifyCmd(g), newResolveCmd(g), newHistoryCmd(g), newLedgerCmd(g), newRetentionCmd(g))
	root.AddCommand(newPinCmd(g))
	return root
}

// load reads the config file, or the defaults when none was given.
func (g *globals) load() (config.Config, error) {
	if g.configPath == "" {
		return config.Default(), nil
	}
	return config.Load(g.configPath)
}

func newServe(g *globals) *cobra.Command {
	var listen, data, upstream string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the registry API (embedded registry, or a proxy with --upstream)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.load()
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("listen") {
				cfg.Listen = listen
			}
			if cmd.Flags().Changed("data") {
				cfg.Data = data
			}
			if cmd.Flags().Changed("upstream") {
				cfg.Upstream.URL = upstream
			}
			if errs := cfg.Validate(); len(errs) > 0 {
				return fmt.Errorf("invalid settings: %v", errs)
			}
			log, err := newLogger(cfg.Log, os.Stderr)
			if err != nil {
				return err
			}
			return serve(cmd.Context(), cfg, log)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "", "address to listen on (default 127.0.0.1:5000)")
	cmd.Flags().StringVar(&data, "data", "", "data directory (default ./taglock-data)")
	cmd.Flags().StringVar(&upstream, "upstream", "", "upstream registry URL; empty serves the embedded registry")
	return cmd
}

func serve(ctx context.Context, cfg config.Config, log zerolog.Logger) error {
	srv, err := server.Start(ctx, cfg, log)
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		log.Info().Msg("shutting down: draining requests in flight")
	case err := <-srv.Done():
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info().Msg("stopped")
	return nil
}

// newLogger is zerolog JSON, or human-readable console output on a terminal.
func newLogger(c config.Log, w io.Writer) (zerolog.Logger, error) {
	level, err := zerolog.ParseLevel(c.Level)
	if err != nil {
		return zerolog.Logger{}, err
	}
	out := w
	console := c.Format == "console"
	if c.Format == "auto" {
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			console = true
		}
	}
	if console {
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(out).Level(level).With().Timestamp().Logger(), nil
}

func newConfigCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Work with configuration files"}
	cmd.AddCommand(&cobra.Command{
		Use:   "validate",
		Short: "Check a configuration file without serving; exit 1 with every problem found",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if g.configPath == "" {
				return exitError{code: exitUsage, msg: "config validate needs --config FILE"}
			}
			if _, err := config.Load(g.configPath); err != nil {
				return exitError{code: exitFailure, msg: err.Error()}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: valid\n", g.configPath)
			return nil
		},
	})
	return cmd
}

// version is set by the build (-ldflags "-X main.version=...").
var version = "dev"

func newVersion() *cobra.Command {
	return &cobra.Command{Use: "version", Short: "Print the version", Args: cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), "taglock", version) }}
}
