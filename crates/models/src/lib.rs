//! verre model store
