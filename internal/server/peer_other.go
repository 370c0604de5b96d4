//go:build !linux

package server

import "net"

// peerCaller names the peer of an admin socket connection; only Linux tells
// which process it is.
func peerCaller(net.Conn) string { return "admin socket" }
