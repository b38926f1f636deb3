package cluster

import (
	"strings"
	"testing"
)

// TestRemotingRefusesNonLoopbackBind: the actor remoting port accepts
// any envelope from whoever reaches it, so until members authenticate
// each other it may only listen on a loopback address; anything else is
// a configuration error naming cluster.bind.
func TestRemotingRefusesNonLoopbackBind(t *testing.T) {
	for _, bind := range []string{"0.0.0.0:0", ":7100", "[::]:7100", "10.1.2.3:7100", "192.168.0.5:0", "example.com:7100"} {
		cfg := DefaultConfig()
		cfg.Bind, cfg.Advertise = bind, "10.1.2.3:7100"
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), "cluster.bind") || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("bind %q: %v, want an error naming cluster.bind and loopback", bind, err)
		}
	}
	for _, bind := range []string{"127.0.0.1:0", "127.0.0.2:7100", "[::1]:7100", "localhost:7100"} {
		cfg := DefaultConfig()
		cfg.Bind = bind
		if err := cfg.Validate(); err != nil {
			t.Errorf("bind %q: %v", bind, err)
		}
	}
}
