from fer_train.entry import train

train()
