//! The recurrent cell chosen by [`ModelConfig::cell`](crate::ModelConfig): the
//! listener's bidirectional layers and the speller's step-wise cells as enums over
//! LSTM, GRU and Elman RNN, dispatching to the `lasr-nn` layers. Parameter names are
//! the layers' own (PyTorch's) for every cell type; only shapes differ.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, ArrayViewD, ArrayViewMut2, ArrayViewMutD};
use rand::Rng;

use lasr_nn::{
    BiElman, BiElmanCache, BiGru, BiGruCache, BiLstm, BiLstmCache, ElmanCell, ElmanCellCache,
    GruCell, GruCellCache, LstmCell, LstmCellCache, Module, PackedRecurrent, PreparedElmanCell,
    PreparedGruCell, PreparedLstmCell, TeamMember, WeightFormat,
};

use crate::config::CellType;
use crate::error::{Error, Result};

/// A model, its gradients, a cache or a state built for another cell type.
fn mismatch(what: &str) -> Error {
    Error::Config(format!(
        "{what} belongs to a different cell type (built from another model config)"
    ))
}

/// Runs `$body` with `$x` bound to the layer inside any variant of `$value`.
macro_rules! dispatch {
    ($ty:ident, $value:expr, $x:ident => $body:expr) => {
        match $value {
            $ty::Lstm($x) => $body,
            $ty::Gru($x) => $body,
            $ty::Rnn($x) => $body,
        }
    };
}

/// One bidirectional listener layer (`nn.LSTM`, `nn.GRU` or `nn.RNN` with
/// `bidirectional=True`): `[T, B, I]` -> `[T, B, 2H]`.
#[derive(Debug, Clone, PartialEq)]
pub enum ListenerLayer {
    Lstm(BiLstm),
    Gru(BiGru),
    Rnn(BiElman),
}

/// What [`ListenerLayer::backward`] needs.
#[derive(Debug, Clone)]
pub enum ListenerLayerCache {
    Lstm(BiLstmCache),
    Gru(BiGruCache),
    Rnn(BiElmanCache),
}

impl ListenerLayer {
    /// Layer 0 of a stack (names `weight_ih_l0`, `..._reverse`), PyTorch's
    /// initialisation.
    pub fn new(cell: CellType, input: usize, hidden: usize, rng: &mut impl Rng) -> Self {
        match cell {
            CellType::Lstm => ListenerLayer::Lstm(BiLstm::new(input, hidden, 0, rng)),
            CellType::Gru => ListenerLayer::Gru(BiGru::new(input, hidden, 0, rng)),
            CellType::Rnn => ListenerLayer::Rnn(BiElman::new(input, hidden, 0, rng)),
        }
    }

    /// `x` `[T, B, I]` -> `[T, B, 2H]` and the cache; `lengths` `[B]` marks live steps.
    pub fn forward(
        &self,
        x: ArrayView3<f32>,
        lengths: Option<&[usize]>,
    ) -> Result<(Array3<f32>, ListenerLayerCache)> {
        Ok(match self {
            ListenerLayer::Lstm(l) => {
                let (y, c) = l.forward(x, lengths)?;
                (y, ListenerLayerCache::Lstm(c))
            }
            ListenerLayer::Gru(l) => {
                let (y, c) = l.forward(x, lengths)?;
                (y, ListenerLayerCache::Gru(c))
            }
            ListenerLayer::Rnn(l) => {
                let (y, c) = l.forward(x, lengths)?;
                (y, ListenerLayerCache::Rnn(c))
            }
        })
    }

    /// Inference over one sequence, no cache: `x` `[T, I]` -> `[T, 2H]`.
    pub fn infer(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        Ok(dispatch!(ListenerLayer, self, l => l.infer(x)?))
    }

    /// Both directions' weights packed for [`ListenerLayer::infer_packed`].
    pub fn pack(&self, format: WeightFormat) -> [PackedRecurrent; 2] {
        dispatch!(ListenerLayer, self, l => l.pack(format))
    }

    /// [`ListenerLayer::infer`] reusing `w`, this layer's [`ListenerLayer::pack`].
    pub fn infer_packed(
        &self,
        x: ArrayView2<f32>,
        w: &[PackedRecurrent; 2],
    ) -> Result<Array2<f32>> {
        Ok(dispatch!(ListenerLayer, self, l => l.infer_packed(x, w)?))
    }

    /// `dy` `[T, B, 2H]` -> `dx` `[T, B, I]` if `input_grad` (the first layer's is
    /// of no use in training), gradients added into `grads`.
    pub fn backward(
        &self,
        cache: &ListenerLayerCache,
        dy: ArrayView3<f32>,
        grads: &mut ListenerLayer,
        input_grad: bool,
    ) -> Result<Option<Array3<f32>>> {
        use ListenerLayer as L;
        use ListenerLayerCache as C;
        Ok(match (self, cache, grads) {
            (L::Lstm(l), C::Lstm(c), L::Lstm(g)) => l.backward_to(c, dy, g, input_grad)?,
            (L::Gru(l), C::Gru(c), L::Gru(g)) => l.backward_to(c, dy, g, input_grad)?,
            (L::Rnn(l), C::Rnn(c), L::Rnn(g)) => l.backward_to(c, dy, g, input_grad)?,
            _ => return Err(mismatch("a listener layer's cache or gradient")),
        })
    }
}

impl Module for ListenerLayer {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, ArrayViewD<'a, f32>)) {
        dispatch!(ListenerLayer, self, l => l.visit(prefix, f))
    }

    fn visit_mut<'a>(
        &'a mut self,
        prefix: &str,
        f: &mut dyn FnMut(String, ArrayViewMutD<'a, f32>),
    ) {
        dispatch!(ListenerLayer, self, l => l.visit_mut(prefix, f))
    }

    fn zeros_like(&self) -> Self {
        match self {
            ListenerLayer::Lstm(l) => ListenerLayer::Lstm(l.zeros_like()),
            ListenerLayer::Gru(l) => ListenerLayer::Gru(l.zeros_like()),
            ListenerLayer::Rnn(l) => ListenerLayer::Rnn(l.zeros_like()),
        }
    }
}

/// One of the speller's step-wise cells (`nn.LSTMCell`, `nn.GRUCell` or `nn.RNNCell`).
#[derive(Debug, Clone, PartialEq)]
pub enum SpellerCell {
    Lstm(LstmCell),
    Gru(GruCell),
    Rnn(ElmanCell),
}

/// A [`SpellerCell`]'s transposed weights (see [`SpellerCell::prepare`]).
#[derive(Debug, Clone)]
pub enum PreparedCell {
    Lstm(PreparedLstmCell),
    Gru(PreparedGruCell),
    Rnn(PreparedElmanCell),
}

/// What [`SpellerCell::backward`] needs from one step.
#[derive(Debug, Clone)]
pub enum SpellerCellCache {
    Lstm(LstmCellCache),
    Gru(GruCellCache),
    Rnn(ElmanCellCache),
}

/// A cell's recurrent state of `B` rows: `h` `[B, H]`, and the LSTM's memory `c`
/// `[B, H]` (`None` for GRU and RNN). Gradients with respect to a state take the same
/// form.
#[derive(Debug, Clone, PartialEq)]
pub struct CellState {
    pub h: Array2<f32>,
    pub c: Option<Array2<f32>>,
}

impl CellState {
    /// Rows `rows` of the state, in that order.
    pub fn select(&self, rows: &[usize]) -> CellState {
        let pick = |a: &Array2<f32>| a.select(ndarray::Axis(0), rows);
        CellState {
            h: pick(&self.h),
            c: self.c.as_ref().map(pick),
        }
    }
}

/// The LSTM's `c` of a state (or gradient), which must be there.
fn memory(c: &Option<Array2<f32>>) -> Result<ArrayView2<'_, f32>> {
    c.as_ref()
        .map(|c| c.view())
        .ok_or_else(|| mismatch("a state without the LSTM's memory"))
}

impl SpellerCell {
    /// PyTorch's initialisation for input width `input`, hidden width `hidden`.
    pub fn new(cell: CellType, input: usize, hidden: usize, rng: &mut impl Rng) -> Self {
        match cell {
            CellType::Lstm => SpellerCell::Lstm(LstmCell::new(input, hidden, rng)),
            CellType::Gru => SpellerCell::Gru(GruCell::new(input, hidden, rng)),
            CellType::Rnn => SpellerCell::Rnn(ElmanCell::new(input, hidden, rng)),
        }
    }

    /// Hidden width `H`.
    pub fn hidden(&self) -> usize {
        dispatch!(SpellerCell, self, c => c.hidden())
    }

    /// The zero state of `rows` rows (where every sequence starts).
    pub fn zero_state(&self, rows: usize) -> CellState {
        let h = Array2::zeros((rows, self.hidden()));
        CellState {
            c: matches!(self, SpellerCell::Lstm(_)).then(|| h.clone()),
            h,
        }
    }

    /// Transposed weights for [`SpellerCell::forward`] and batched
    /// [`SpellerCell::step`]s; the weights must not change while it is in use.
    pub fn prepare(&self) -> PreparedCell {
        match self {
            SpellerCell::Lstm(c) => PreparedCell::Lstm(c.prepare()),
            SpellerCell::Gru(c) => PreparedCell::Gru(c.prepare()),
            SpellerCell::Rnn(c) => PreparedCell::Rnn(c.prepare()),
        }
    }

    /// [`SpellerCell::prepare`] for training steps whose first `given` input columns
    /// reach an LSTM's gates as rows of [`SpellerCell::given_table`]
    /// ([`LstmCell::prepare_given`]); GRU and RNN cells take their whole input as
    /// before (`given` 0).
    pub fn prepare_given(&self, given: usize) -> PreparedCell {
        match self {
            SpellerCell::Lstm(c) => PreparedCell::Lstm(c.prepare_given(given)),
            _ => self.prepare(),
        }
    }

    /// The table of the given columns' gate contributions for embedding rows `emb`
    /// `[V, G]` (`[V, 4H]`, [`LstmCell::given_table`]), for an LSTM; `None` for the
    /// other cells.
    pub fn given_table(&self, emb: ArrayView2<f32>) -> Result<Option<Array2<f32>>> {
        Ok(match self {
            SpellerCell::Lstm(c) => Some(c.given_table(emb)?),
            _ => None,
        })
    }

    /// The backward of [`SpellerCell::given_table`] ([`LstmCell::given_table_backward`]).
    pub fn given_table_backward(
        &self,
        emb: ArrayView2<f32>,
        dtable: ArrayView2<f32>,
        grads: &mut SpellerCell,
        demb: ArrayViewMut2<f32>,
    ) -> Result<()> {
        match (self, grads) {
            (SpellerCell::Lstm(c), SpellerCell::Lstm(g)) => {
                Ok(c.given_table_backward(emb, dtable, g, demb)?)
            }
            _ => Err(mismatch("a given table's gradient")),
        }
    }

    /// [`SpellerCell::prepare`] plus the weights packed in `format` for single-row
    /// steps (greedy decoding), and in int8 for beams' rows too.
    pub fn prepare_packed(&self, format: WeightFormat) -> PreparedCell {
        match self {
            SpellerCell::Lstm(c) => PreparedCell::Lstm(c.prepare_packed(format)),
            SpellerCell::Gru(c) => PreparedCell::Gru(c.prepare_packed(format)),
            SpellerCell::Rnn(c) => PreparedCell::Rnn(c.prepare_packed(format)),
        }
    }

    /// One inference step, no cache: `x` `[B, I]`, state of `B` rows -> new state. A
    /// single row takes matrix-vector products on `prepared`'s packed weights (or the
    /// weights as stored); more rows run gemm on `prepared`'s transposed weights (int8:
    /// packed products over all rows).
    pub fn step(
        &self,
        prepared: Option<&PreparedCell>,
        x: ArrayView2<f32>,
        state: &CellState,
    ) -> Result<CellState> {
        let h = state.h.view();
        // The prepared weights of this cell's type, if any were given.
        macro_rules! prepared {
            ($variant:ident) => {
                match prepared {
                    None => None,
                    Some(PreparedCell::$variant(p)) => Some(p),
                    Some(_) => return Err(mismatch("a prepared speller cell")),
                }
            };
        }
        Ok(match self {
            SpellerCell::Lstm(cell) => {
                let (h, c) = cell.step(prepared!(Lstm), x, h, memory(&state.c)?)?;
                CellState { h, c: Some(c) }
            }
            SpellerCell::Gru(cell) => CellState {
                h: cell.step(prepared!(Gru), x, h)?,
                c: None,
            },
            SpellerCell::Rnn(cell) => CellState {
                h: cell.step(prepared!(Rnn), x, h)?,
                c: None,
            },
        })
    }

    /// One training step: `x` `[B, I]`, state of `B` rows -> new state and the cache.
    /// `prepared` must come from this cell's current weights. An LSTM shares its
    /// products' weight stream with `team`, if given ([`LstmCell::forward_in`]); the
    /// other cells ignore it.
    pub fn forward(
        &self,
        team: Option<&TeamMember>,
        prepared: &PreparedCell,
        x: ArrayView2<f32>,
        state: &CellState,
    ) -> Result<(CellState, SpellerCellCache)> {
        self.forward_given(team, prepared, None, x, state)
    }

    /// [`SpellerCell::forward`] with weights from [`SpellerCell::prepare_given`]: an
    /// LSTM prepared for given columns takes their gate contribution as `given_gates`
    /// `[B, 4H]` and the rest of its input as `x` ([`LstmCell::forward_given`]).
    pub fn forward_given(
        &self,
        team: Option<&TeamMember>,
        prepared: &PreparedCell,
        given_gates: Option<ArrayView2<f32>>,
        x: ArrayView2<f32>,
        state: &CellState,
    ) -> Result<(CellState, SpellerCellCache)> {
        let h = state.h.view();
        if given_gates.is_some() && !matches!(self, SpellerCell::Lstm(_)) {
            // Only an LSTM takes given columns; ignoring the rows would drop them.
            return Err(mismatch("given gate rows"));
        }
        Ok(match (self, prepared) {
            (SpellerCell::Lstm(cell), PreparedCell::Lstm(p)) => {
                let (h, c, cache) =
                    cell.forward_given(team, p, given_gates, x, h, memory(&state.c)?)?;
                (CellState { h, c: Some(c) }, SpellerCellCache::Lstm(cache))
            }
            (SpellerCell::Gru(cell), PreparedCell::Gru(p)) => {
                let (h, cache) = cell.forward(p, x, h)?;
                (CellState { h, c: None }, SpellerCellCache::Gru(cache))
            }
            (SpellerCell::Rnn(cell), PreparedCell::Rnn(p)) => {
                let (h, cache) = cell.forward(p, x, h)?;
                (CellState { h, c: None }, SpellerCellCache::Rnn(cache))
            }
            _ => return Err(mismatch("a prepared speller cell")),
        })
    }

    /// Gradients of one step: given `d` (the gradient reaching the new state from
    /// everything after it), adds parameter gradients into `grads` and returns `dL/dx`
    /// `[B, I]` (`[B, I - given]` after [`SpellerCell::forward_given`]) and the
    /// gradient reaching the previous state.
    pub fn backward(
        &self,
        cache: &SpellerCellCache,
        d: &CellState,
        grads: &mut SpellerCell,
    ) -> Result<(Array2<f32>, CellState)> {
        use SpellerCell as S;
        use SpellerCellCache as C;
        let dh = d.h.view();
        Ok(match (self, cache, grads) {
            (S::Lstm(cell), C::Lstm(c), S::Lstm(g)) => {
                let (dx, dh, dc) = cell.backward(c, dh, memory(&d.c)?, g)?;
                (dx, CellState { h: dh, c: Some(dc) })
            }
            (S::Gru(cell), C::Gru(c), S::Gru(g)) => {
                let (dx, dh) = cell.backward(c, dh, g)?;
                (dx, CellState { h: dh, c: None })
            }
            (S::Rnn(cell), C::Rnn(c), S::Rnn(g)) => {
                let (dx, dh) = cell.backward(c, dh, g)?;
                (dx, CellState { h: dh, c: None })
            }
            _ => return Err(mismatch("a speller cell's cache or gradient")),
        })
    }
}

impl SpellerCell {
    /// [`SpellerCell::backward`] with an LSTM cell's parameter gradients left for
    /// [`SpellerCell::accumulate`]: its gate gradients are pushed onto `pending`
    /// (GRU and RNN cells add theirs into `grads` at once and push nothing). A
    /// backward pass through many steps then updates each weight gradient once, not
    /// once per step (see [`LstmCell::backward_gates`]).
    ///
    /// `prepared`, from this cell's current weights (the forward pass's), lends an
    /// LSTM its packed transposes for the step's products, whose weight stream it
    /// shares with `team`, if given.
    pub fn backward_deferred(
        &self,
        team: Option<&TeamMember>,
        prepared: &PreparedCell,
        cache: &SpellerCellCache,
        d: &CellState,
        grads: &mut SpellerCell,
        pending: &mut Vec<Array2<f32>>,
    ) -> Result<(Array2<f32>, CellState)> {
        match (self, cache) {
            (SpellerCell::Lstm(cell), SpellerCellCache::Lstm(c)) => {
                let PreparedCell::Lstm(p) = prepared else {
                    return Err(mismatch("a prepared speller cell"));
                };
                let (dx, dh, dc, dgates) =
                    cell.backward_gates_in(team, Some(p), c, d.h.view(), memory(&d.c)?)?;
                pending.push(dgates);
                Ok((dx, CellState { h: dh, c: Some(dc) }))
            }
            _ => self.backward(cache, d, grads),
        }
    }

    /// Adds the parameter gradients `pending` holds for the steps whose caches are
    /// `caches`, in the order they were pushed, into `grads`.
    pub fn accumulate(
        &self,
        caches: &[&SpellerCellCache],
        pending: &[Array2<f32>],
        grads: &mut SpellerCell,
    ) -> Result<()> {
        match (self, grads) {
            (SpellerCell::Lstm(cell), SpellerCell::Lstm(g)) => {
                if caches.len() != pending.len() {
                    return Err(Error::Batch(format!(
                        "{} pending gate gradients for {} steps",
                        pending.len(),
                        caches.len()
                    )));
                }
                let steps = caches
                    .iter()
                    .zip(pending)
                    .map(|(c, dg)| match c {
                        SpellerCellCache::Lstm(c) => Ok((c, dg.view())),
                        _ => Err(mismatch("a speller cell's cache")),
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(cell.accumulate(&steps, g)?)
            }
            _ if pending.is_empty() => Ok(()),
            _ => Err(mismatch("pending LSTM gradients")),
        }
    }
}

impl Module for SpellerCell {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, ArrayViewD<'a, f32>)) {
        dispatch!(SpellerCell, self, c => c.visit(prefix, f))
    }

    fn visit_mut<'a>(
        &'a mut self,
        prefix: &str,
        f: &mut dyn FnMut(String, ArrayViewMutD<'a, f32>),
    ) {
        dispatch!(SpellerCell, self, c => c.visit_mut(prefix, f))
    }

    fn zeros_like(&self) -> Self {
        match self {
            SpellerCell::Lstm(c) => SpellerCell::Lstm(c.zeros_like()),
            SpellerCell::Gru(c) => SpellerCell::Gru(c.zeros_like()),
            SpellerCell::Rnn(c) => SpellerCell::Rnn(c.zeros_like()),
        }
    }
}
