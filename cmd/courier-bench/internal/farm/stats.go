package farm

import "sync/atomic"

// counter names a loop counter.
type counter int

const (
	cOnline counter = iota
	cDialed
	cLoginOK
	cLoginFailed
	cDisconnects
	cKicked
	cErrors
	cRecvS2C
	cAckedS2C
	cForeign
	cDiscarded
	cSentC2C
	cAckC2C
	cRecvC2C
	cAckedC2C
	cAckAckC2C
	cSentC2S
	cAckC2S
	cKeepalives
	cKeepaliveAcks
	numCounters
)

// counters are written by their loop only and read by anyone.
type counters [numCounters]atomic.Int64

func (c *counters) add(k counter, n int64) { c[k].Add(n) }

// Stats are a farm's counters, summed over its loops.
type Stats struct {
	Online        int64 `json:"online"`         // devices logged in now
	Dialed        int64 `json:"dialed"`         // connections attempted
	LoginOK       int64 `json:"login_ok"`       // LOGIN_ACK OK
	LoginFailed   int64 `json:"login_failed"`   // refused, connect errors, timeouts
	Disconnects   int64 `json:"disconnects"`    // connections the server or network ended
	Kicked        int64 `json:"kicked"`         // KICKOUT frames
	Errors        int64 `json:"errors"`         // ERROR frames and protocol breaches
	RecvS2C       int64 `json:"recv_s2c"`       // S2C frames received (with retries)
	AckedS2C      int64 `json:"acked_s2c"`      // S2C_ACK frames sent
	Foreign       int64 `json:"foreign"`        // pushes not of this run (acked, ignored)
	Discarded     int64 `json:"discarded"`      // pushes deliberately not recorded (DropEvery)
	SentC2C       int64 `json:"sent_c2c"`       // C2C frames sent
	AckC2C        int64 `json:"ack_c2c"`        // C2C_ACK frames received
	RecvC2C       int64 `json:"recv_c2c"`       // C2C_PUSH frames received
	AckedC2C      int64 `json:"acked_c2c"`      // C2C_PUSH_ACK frames sent
	AckAckC2C     int64 `json:"ackack_c2c"`     // C2C_PUSH_ACK_ACK frames received
	SentC2S       int64 `json:"sent_c2s"`       // C2S frames sent
	AckC2S        int64 `json:"ack_c2s"`        // C2S_ACK frames received
	Keepalives    int64 `json:"keepalives"`     // KEEPALIVE frames sent
	KeepaliveAcks int64 `json:"keepalive_acks"` // KEEPALIVE_ACK frames received
	// LastError describes the last ERROR frame or failure seen, if any.
	LastError string `json:"last_error,omitempty"`
}

func (s *Stats) add(c *counters) {
	v := func(k counter) int64 { return c[k].Load() }
	s.Online += v(cOnline)
	s.Dialed += v(cDialed)
	s.LoginOK += v(cLoginOK)
	s.LoginFailed += v(cLoginFailed)
	s.Disconnects += v(cDisconnects)
	s.Kicked += v(cKicked)
	s.Errors += v(cErrors)
	s.RecvS2C += v(cRecvS2C)
	s.AckedS2C += v(cAckedS2C)
	s.Foreign += v(cForeign)
	s.Discarded += v(cDiscarded)
	s.SentC2C += v(cSentC2C)
	s.AckC2C += v(cAckC2C)
	s.RecvC2C += v(cRecvC2C)
	s.AckedC2C += v(cAckedC2C)
	s.AckAckC2C += v(cAckAckC2C)
	s.SentC2S += v(cSentC2S)
	s.AckC2S += v(cAckC2S)
	s.Keepalives += v(cKeepalives)
	s.KeepaliveAcks += v(cKeepaliveAcks)
}

// Add adds o's counters to s (for summing farms).
func (s *Stats) Add(o Stats) {
	s.Online += o.Online
	s.Dialed += o.Dialed
	s.LoginOK += o.LoginOK
	s.LoginFailed += o.LoginFailed
	s.Disconnects += o.Disconnects
	s.Kicked += o.Kicked
	s.Errors += o.Errors
	s.RecvS2C += o.RecvS2C
	s.AckedS2C += o.AckedS2C
	s.Foreign += o.Foreign
	s.Discarded += o.Discarded
	s.SentC2C += o.SentC2C
	s.AckC2C += o.AckC2C
	s.RecvC2C += o.RecvC2C
	s.AckedC2C += o.AckedC2C
	s.AckAckC2C += o.AckAckC2C
	s.SentC2S += o.SentC2S
	s.AckC2S += o.AckC2S
	s.Keepalives += o.Keepalives
	s.KeepaliveAcks += o.KeepaliveAcks
	if o.LastError != "" {
		s.LastError = o.LastError
	}
}
