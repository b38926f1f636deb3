package node

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/courier-im/courier/actors/store"
)

// fenceCounting counts the writes the store refused because another
// activation had claimed their identity since (store.ErrFenced): a stale
// owner caught writing, during a move or after a member was taken for
// gone.
type fenceCounting struct {
	store.Store
	fenced prometheus.Counter
}

func newFenceCounting(s store.Store, reg prometheus.Registerer) store.Store {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "courier_store_fenced_writes_total",
		Help: "Writes refused because another activation had claimed their identity since (ownership fencing)."})
	reg.MustRegister(c)
	return fenceCounting{Store: s, fenced: c}
}

// Submit implements store.Store.
func (f fenceCounting) Submit(w *store.Write, done func(error)) {
	f.Store.Submit(w, func(err error) {
		if errors.Is(err, store.ErrFenced) {
			f.fenced.Inc()
		}
		done(err)
	})
}
