package main

import (
	"github.com/relaytun/relay/internal/buildinfo"
	"github.com/relaytun/relay/tunnel"
)

var versionCommand = buildinfo.VersionCommand("relayctl", tunnel.ProtocolVersion)
